"""What runs on the Ray workers: reading a source part, a cheap stage on a block of rows, and
the actor that holds a model and runs the model-batching routine on its blocks.

Steps travel as plan nodes: a registered operator by its name and parameters (the worker
builds it from its own registry — the model is loaded there, never pickled); an operator
registered only in the driver process, or a ``.map`` function, by value (cloudpickle).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any, TypeVar

from ... import registry
from ...hooks import PreparesAlone
from ...io.readers import BadRow, Part
from ...models import allow_import
from ...plan import Apply, ModelStage, Step, instantiate
from ..batching import ModelBatcher, for_device, make_replica
from ..devices import bind_device, cpu_count, resolve_device
from ..failures import Failure
from ..prepare_processes import rebuilt_by_name
from ..replicas import fresh, place
from ..steps import run_cheap
from .codec import FAILED, ROWS_PER_BLOCK, Collector, carry_errors, decode, encode, raised


def ship(obj: Any) -> bytes:
    """A stage or steps as bytes for the workers (see the module docstring)."""
    import cloudpickle

    return cloudpickle.dumps(obj)


S = TypeVar("S", bound=Step)


def shippable(step: S) -> S:
    """``step`` as a worker can rebuild it: an operator that no installed package provides
    (registered in this process) travels by value."""
    if isinstance(step, Apply) and step.target is None and not rebuilt_by_name(step):
        return replace(step, target=registry.get_operator(step.name))
    return step


# --------------------------------------------------------------------------- the source
def read_part(part: Part, on_error: str, label: str) -> Iterator[Any]:
    """One part of a source as Arrow blocks of encoded rows (runs in a Ray read task); a row
    the reader could not read becomes a failure marker under skip, else a raised marker."""
    import pyarrow as pa

    def block(numbers: list[int], payloads: list[bytes]) -> Any:
        return pa.table({"__row": pa.array(numbers, pa.int64()), "__payload": pa.array(payloads, pa.binary())})

    numbers: list[int] = []
    payloads: list[bytes] = []
    for number, row in part:
        if type(row) is BadRow:
            numbers.append(-1)
            if on_error != "skip":
                payloads.append(raised(row.error))
                break
            record = asdict(Failure.of(label, number, row.raw, row.error, str(number)))
            payloads.append(pickle.dumps((FAILED, record), protocol=5))
        else:
            numbers.append(number)
            payloads.append(pickle.dumps(row, protocol=5))
        if len(numbers) == ROWS_PER_BLOCK * 4:
            yield block(numbers, payloads)
            numbers, payloads = [], []
    if numbers:
        yield block(numbers, payloads)


# --------------------------------------------------------------------------- cheap stages
def cheap_task(steps_bytes: bytes, key_column: str | None, allowed: list[str]) -> Any:
    """A Ray task function that runs fused cheap and per-item steps on a block of rows."""

    @carry_errors
    def run(batch: dict[str, Any]) -> dict[str, Any]:
        allow_import(*allowed)  # the modules the driver's user allowed model factories from
        steps: Sequence[Step] = pickle.loads(steps_bytes)
        numbers, rows, markers = decode(batch)
        log = Collector(key_column)
        ops = {id(s): fresh(s, "cpu") for s in steps if isinstance(s, Apply)}
        out_numbers: list[int] = []
        out_rows: list[Any] = []
        for n, r in run_cheap(steps, ops, iter([(numbers, rows)]), log):
            out_numbers.extend(n)
            out_rows.extend(r)
        return encode(out_numbers, out_rows, markers, log.records)

    return run


# --------------------------------------------------------------------------- model stages
def can_prepare_elsewhere(stage: ModelStage) -> bool:
    """Whether the stage's operator can prepare items in a process without its model
    (``setup_preprocess``), so Ray's CPU tasks can feed a GPU actor."""
    step = stage.step
    if not isinstance(step, Apply):
        return False
    target = registry.get_operator(step.name) if step.target is None else step.target
    return (isinstance(target, type) and issubclass(target, PreparesAlone)) or isinstance(target, PreparesAlone)


def prepare_task(stage_bytes: bytes, device: str, key_column: str | None, allowed: list[str]) -> Any:
    """A Ray task function that prepares a block of rows for a model actor on ``device``:
    each row leaves as ``(row, prepared item, size)``; a row that fails is named or skipped
    as in the local engine."""

    @carry_errors
    def run(batch: dict[str, Any]) -> dict[str, Any]:
        stage, op = _preparer(stage_bytes, device, tuple(allowed))
        numbers, rows, markers = decode(batch)
        log = Collector(key_column)
        # a skipped row is not a Prepared tuple (SKIPPED itself cannot be compared here: this
        # closure travels by value, with a copy of it)
        prepared = [p for p in ModelBatcher(stage, op, log).prepare(numbers, rows) if isinstance(p, tuple)]
        return encode([p[0] for p in prepared], [p[1:] for p in prepared], markers, log.records)

    return run


@functools.lru_cache(maxsize=8)
def _preparer(stage_bytes: bytes, device: str, allowed: tuple[str, ...]) -> tuple[ModelStage, Any]:
    """The stage and its operator set up without weights, once per worker process (a module
    function: the task's closure calls it by reference, so the cache is the process's)."""
    allow_import(*allowed)  # the modules the driver's user allowed model factories from
    stage: ModelStage = pickle.loads(stage_bytes)
    op = instantiate(stage.step)
    if not isinstance(op, PreparesAlone):
        msg = f"{stage.step.label}: its operator has no setup_preprocess(device)"
        raise TypeError(msg)
    place(op, device)
    op.setup_preprocess(device)
    return for_device(stage, device), op


class ModelActor:
    """One replica of a model stage's operator inside a Ray actor."""

    def __init__(self, stage_bytes: bytes, device: str, key_column: str | None, allowed: list[str], prepared: bool = False):
        allow_import(*allowed)  # the modules the driver's user allowed model factories from
        self.stage: ModelStage = pickle.loads(stage_bytes)
        if device == "cpu":
            # Ray caps torch at the CPUs the actor holds (all but one, so that cheap tasks can
            # run beside it); as in the local engine, torch gets every core of the node and
            # shares them with the decode threads (measured: 1 thread halves MiniLM's speed)
            import torch

            torch.set_num_threads(cpu_count())
        self.device = resolve_device(device)
        bind_device(self.device)  # the actor's thread works on the GPU Ray gave it
        self.stage = for_device(self.stage, self.device)
        self.replica = make_replica(self.device, fresh(self.stage.step, self.device), self.stage.dtype, label=self.stage.step.label)
        self.key_column = key_column
        self.prepared = prepared  # rows arrive as (row, item, size) from prepare_task
        workers = self.stage.workers or 1
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="embedflow-actor-prepare") if workers > 1 and not prepared else None

    @carry_errors
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        numbers, rows, markers = decode(batch)
        log = Collector(self.key_column)
        batcher = ModelBatcher(self.stage, self.replica.op, log)
        if self.prepared:
            items = [(n, row, item, size) for n, (row, item, size) in zip(numbers, rows)]
            out_numbers, out_rows = batcher.process_prepared(self.replica, items)
        else:  # the actor prepares its own items: in workers= threads when the step says so
            out_numbers, out_rows = batcher.process(self.replica, numbers, rows, pool=self.pool, workers=self.stage.workers or 1)
        return encode(out_numbers, out_rows, markers, log.records)
