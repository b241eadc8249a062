"""The local engine: runs a plan in this process, streaming chunks of rows step by step.

Every step is a generator over chunks ``(keys, rows)`` where a key is the source row number
(kept for error messages and ``.safe()`` records). Nothing is materialised between steps;
batchable operators collect prepared items into batches of ``batch_size`` across chunks and
run ``forward`` once per batch. Output order equals input order.

>>> import embedflow as ef
>>> ef.dc(range(5)).map(lambda x: x * x).filter(lambda x: x % 2 == 0).to_list()
[0, 4, 16]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..devices import move, resolve_device
from ..errors import EmbedflowError, ItemError
from ..failures import Failure, FailureLog
from ..operator import Operator
from ..plan import Apply, Batch, Filter, FlatMap, Head, Plan, Project, Source, Step
from ..rows import missing_column, read_inputs, write_outputs
from .base import Engine

Chunk = tuple[list[int], list[Any]]
MAX_CHUNK = 256


class _Skip(Exception):
    """Internal: an item failed and was recorded under ``.safe()``."""


def _source_chunks(source: Source) -> Iterator[Chunk]:
    """Chunks of source rows; sizes grow 1, 2, 4 ... so the first rows arrive at once."""
    size, keys, rows = 1, [], []
    for key, row in enumerate(source.open()):
        keys.append(key)
        rows.append(row)
        if len(rows) >= size:
            yield keys, rows
            size, keys, rows = min(size * 2, MAX_CHUNK), [], []
    if rows:
        yield keys, rows


class _Guard:
    """Runs one item's work and applies the step's error policy."""

    def __init__(self, step: Step, label: str, failures: FailureLog):
        self.skip = step.on_error == "skip"
        self.label = label
        self.failures = failures

    def fail(self, key: int | None, item: Any, exc: Exception) -> None:
        if isinstance(exc, ItemError):
            raise exc
        if self.skip:
            self.failures.record(Failure.of(self.label, key, item, exc))
            raise _Skip from exc
        raise ItemError(self.label, key, item, exc) from exc


def _is_setup_needed(op: Operator) -> bool:
    return type(op).setup is not Operator.setup


class LocalEngine(Engine):
    """Single-process engine; per-item work may use a thread pool (``workers=``)."""

    name = "local"

    def execute(self, plan: Plan, failures: FailureLog) -> Iterator[list[Any]]:
        chunks: Iterator[Chunk] = _source_chunks(plan.source)
        with contextlib.ExitStack() as stack:
            for step in plan.steps:
                chunks = self._lower(step, chunks, plan, failures, stack)
            for _keys, rows in chunks:
                if rows:
                    yield rows

    def _lower(self, step: Step, chunks: Iterator[Chunk], plan: Plan, failures: FailureLog, stack: contextlib.ExitStack) -> Iterator[Chunk]:
        if isinstance(step, Apply):
            op = self._ready_operator(step, plan)
            workers = step.options.workers or 1
            pool = stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="embedflow")) if workers > 1 else None
            if op.batchable:
                return _batched(step, op, chunks, failures, pool)
            return _per_item(step, op, chunks, failures, pool)
        if isinstance(step, Filter):
            return _filter(step, chunks, failures)
        if isinstance(step, FlatMap):
            return _flat_map(step, chunks, failures)
        if isinstance(step, Batch):
            return _batch(step, chunks)
        if isinstance(step, Head):
            return _head(step, chunks)
        if isinstance(step, Project):
            return _project(step, chunks)
        msg = f"the local engine cannot run a {type(step).__name__} step"
        raise EmbedflowError(msg)

    @staticmethod
    def _ready_operator(step: Apply, plan: Plan) -> Operator:
        """The step's operator, set up on its device once and reused by later runs."""
        op = step.operator
        if not (op.batchable or _is_setup_needed(op)):
            return op
        device = resolve_device(step.options.device or plan.device)
        ready = step.ready.get(device)
        if ready is None:
            ready = op if not step.ready else step.factory()
            ready.setup(device)
            ready._embedflow_device = device  # type: ignore[attr-defined]
            step.ready[device] = ready
        return ready


def _map_items(fn, items: list[Any], pool: ThreadPoolExecutor | None) -> list[Any]:
    if pool is None or len(items) < 2:
        return [fn(x) for x in items]
    return list(pool.map(fn, items))


def _per_item(step: Apply, op: Operator, chunks: Iterator[Chunk], failures: FailureLog, pool) -> Iterator[Chunk]:
    guard = _Guard(step, step.name, failures)
    inputs, outputs = step.inputs, step.outputs
    preprocess = op.preprocess

    def run(pair: tuple[int, Any]) -> Any:
        key, row = pair
        try:
            args = read_inputs(row, inputs)
            return write_outputs(row, inputs, outputs, preprocess(*args))
        except Exception as exc:  # noqa: BLE001 - policy decides
            try:
                guard.fail(key, row, exc)
            except _Skip:
                return _SKIPPED

    if pool is None and step.on_error == "raise" and inputs is None:
        for keys, rows in chunks:  # the fast path: no selectors, no skipping
            try:
                yield keys, [preprocess(row) for row in rows]
            except Exception:  # noqa: BLE001 - find the row and raise with it
                for key, row in zip(keys, rows):
                    run((key, row))
                raise
        return
    for keys, rows in chunks:
        results = _map_items(run, list(zip(keys, rows)), pool)
        yield _drop_skipped(keys, results)


_SKIPPED = object()


def _drop_skipped(keys: list[int], rows: list[Any]) -> Chunk:
    if not any(r is _SKIPPED for r in rows):
        return keys, rows
    kept = [(k, r) for k, r in zip(keys, rows) if r is not _SKIPPED]
    return [k for k, _ in kept], [r for _, r in kept]


def _batched(step: Apply, op: Operator, chunks: Iterator[Chunk], failures: FailureLog, pool) -> Iterator[Chunk]:
    """Prepare items, group them into batches of ``batch_size``, forward, split, reassemble."""
    import torch

    guard = _Guard(step, step.name, failures)
    inputs, outputs = step.inputs, step.outputs
    size = step.options.batch_size or type(op).default_batch_size
    device = getattr(op, "_embedflow_device", "cpu")

    def prepare(pair: tuple[int, Any]) -> Any:
        key, row = pair
        try:
            return op.preprocess(*read_inputs(row, inputs))
        except Exception as exc:  # noqa: BLE001
            try:
                guard.fail(key, row, exc)
            except _Skip:
                return _SKIPPED

    def forward(prepared: list[Any]) -> list[Any]:
        with torch.inference_mode():
            batch = move(op.collate(prepared), device, non_blocking=device.startswith("cuda"))
            output = move(op.forward(batch), "cpu")
        results = op.postprocess(output)
        if len(results) != len(prepared):
            msg = f"{step.name}.postprocess returned {len(results)} results for a batch of {len(prepared)}"
            raise EmbedflowError(msg)
        return results

    def flush(keys: list[int], rows: list[Any], prepared: list[Any]) -> Chunk:
        try:
            results = forward(prepared)
        except EmbedflowError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the bad item, keep the good ones
            if len(prepared) == 1:
                guard.fail(keys[0], rows[0], exc)
            results = []
            for key, row, item in zip(keys, rows, prepared):
                try:
                    results.append(forward([item])[0])
                except Exception as item_exc:  # noqa: BLE001
                    try:
                        guard.fail(key, row, item_exc)
                    except _Skip:
                        results.append(_SKIPPED)
        new_rows = [r if r is _SKIPPED else write_outputs(row, inputs, outputs, r) for row, r in zip(rows, results)]
        return _drop_skipped(keys, new_rows)

    buf_keys: list[int] = []
    buf_rows: list[Any] = []
    buf_items: list[Any] = []
    for keys, rows in chunks:
        prepared = _map_items(prepare, list(zip(keys, rows)), pool)
        for key, row, item in zip(keys, rows, prepared):
            if item is _SKIPPED:
                continue
            buf_keys.append(key)
            buf_rows.append(row)
            buf_items.append(item)
            if len(buf_items) >= size:
                try:
                    yield flush(buf_keys, buf_rows, buf_items)
                except _Skip:
                    pass
                buf_keys, buf_rows, buf_items = [], [], []
    if buf_items:
        try:
            yield flush(buf_keys, buf_rows, buf_items)
        except _Skip:
            pass


def _filter(step: Filter, chunks: Iterator[Chunk], failures: FailureLog) -> Iterator[Chunk]:
    guard = _Guard(step, "filter", failures)
    for keys, rows in chunks:
        out_keys, out_rows = [], []
        for key, row in zip(keys, rows):
            try:
                keep = step.fn(*read_inputs(row, step.inputs))
            except Exception as exc:  # noqa: BLE001
                try:
                    guard.fail(key, row, exc)
                except _Skip:
                    continue
            if keep:
                out_keys.append(key)
                out_rows.append(row)
        yield out_keys, out_rows


def _flat_map(step: FlatMap, chunks: Iterator[Chunk], failures: FailureLog) -> Iterator[Chunk]:
    guard = _Guard(step, "flat_map", failures)
    for keys, rows in chunks:
        out_keys, out_rows = [], []
        for key, row in zip(keys, rows):
            try:
                produced = [write_outputs(row, step.inputs, step.outputs, v) for v in step.fn(*read_inputs(row, step.inputs))]
            except Exception as exc:  # noqa: BLE001
                try:
                    guard.fail(key, row, exc)
                except _Skip:
                    continue
            out_keys.extend([key] * len(produced))
            out_rows.extend(produced)
        yield out_keys, out_rows


def _batch(step: Batch, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    group_key, group = None, []
    for keys, rows in chunks:
        out_keys, out_rows = [], []
        for key, row in zip(keys, rows):
            if not group:
                group_key = key
            group.append(row)
            if len(group) == step.size:
                out_keys.append(group_key)
                out_rows.append(group)
                group = []
        yield out_keys, out_rows
    if group:
        yield [group_key], [group]


def _head(step: Head, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    left = step.n
    if left <= 0:
        return
    for keys, rows in chunks:
        if len(rows) >= left:
            yield keys[:left], rows[:left]
            return
        left -= len(rows)
        yield keys, rows


def _project(step: Project, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    cols = step.columns
    for keys, rows in chunks:
        if step.keep:
            try:
                new = [{c: row[c] for c in cols} for row in rows]
            except KeyError as exc:
                bad = next(row for row in rows if exc.args[0] not in row)
                raise missing_column(exc.args[0], bad) from None
        else:
            new = [{k: v for k, v in row.items() if k not in cols} for row in rows]
        yield keys, new


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1
