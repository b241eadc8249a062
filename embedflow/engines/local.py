"""The local engine: compiles a plan into stages that run in threads, joined by bounded
channels, and streams their output back in input order.

Stages:

* the **source** reads rows in chunks (sizes 1, 2, 4 ... 256, so the first rows arrive at once);
* consecutive cheap steps (functions, ``filter``, ``flat_map``, ``select``, ``head``, ``batch``,
  operators that declare ``threaded = False``) **fuse** into one stage that works chunk-wise;
* an operator whose ``preprocess`` is real work (``threaded = True``: decode) runs on a
  **thread pool** of ``workers`` threads (default: the cores this process may use);
* a **batchable** operator becomes a small pipeline of its own (see :mod:`.model_stage`):
  preprocess on the pool, length-aware batching, one forward worker per device with the next
  batch already prepared, and a reorder buffer.

>>> import embedflow as ef
>>> ef.dc(range(5)).map(lambda x: x * x).filter(lambda x: x % 2 == 0).to_list()
[0, 4, 16]
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..devices import resolve_devices
from ..errors import EmbedflowError
from ..failures import FailureLog
from ..operator import Operator
from ..plan import Apply, Batch, Filter, FlatMap, Head, Plan, Project, Source, Step, Whole
from ..rows import read_inputs, write_outputs
from ..scheduler import END, Channel, Run, RunStats, StageStats
from .base import Engine
from .steps import Chunk, Guard, apply_items, batch_rows, drop_skipped, filter_rows, flat_map_rows, head_rows, project_rows, whole_rows

MAX_CHUNK = 256
CHANNEL_CHUNKS = 4  # chunks buffered between two stages


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def default_workers(replicas: dict[int, list[tuple[str, Operator]]]) -> int:
    """Threads for a preprocess pool when the step does not say ``workers=``.

    All the cores when the models run elsewhere (a GPU); when a model runs on the CPU, torch's
    intra-op threads already use the cores, so the pools get what is left, at least one
    thread — decode threads plus torch threads should not exceed the cores. Measured on 2
    cores (benchmarks/bench_images.py, resnet18): 2 decode threads beside torch's 2 gave
    33 images/s, 1 gave 36.5.
    """
    cores = cpu_count()
    if any(device == "cpu" for reps in replicas.values() for device, op in reps if op.batchable):
        import torch

        return max(1, cores - torch.get_num_threads())
    return cores


def is_batched(step: Step) -> bool:
    return isinstance(step, Apply) and step.operator.batchable


def is_threaded(step: Step) -> bool:
    """A per-item operator step that gets a thread pool of its own."""
    if not isinstance(step, Apply) or step.operator.batchable:
        return False
    if step.options.workers is not None:
        return step.options.workers > 1
    return bool(getattr(step.operator, "threaded", False))


def segments(steps: tuple[Step, ...]) -> list[tuple[str, list[Step]]]:
    """Group steps into stages: ("model", [op]), ("pool", [op]) or ("fused", [cheap steps...])."""
    out: list[tuple[str, list[Step]]] = []
    for step in steps:
        kind = "model" if is_batched(step) else "pool" if is_threaded(step) else "fused"
        if kind == "fused" and out and out[-1][0] == "fused":
            out[-1][1].append(step)
        else:
            out.append((kind, [step]))
    return out


def ready_operators(step: Apply, plan: Plan) -> list[tuple[str, Operator]]:
    """The step's operator set up on each of its devices (one replica per device), kept with
    the step so later runs of the same collection do not load the model again."""
    op = step.operator
    if not (op.batchable or type(op).setup is not Operator.setup):
        return [("cpu", op)]
    if not op.batchable:  # per-item operators with state run on the CPU, set up once
        if "cpu" not in step.ready:
            op.setup("cpu")
            step.ready["cpu"] = op
        return [("cpu", step.ready["cpu"])]
    out = []
    for device in resolve_devices(step.options.device or plan.device):
        ready = step.ready.get(device)
        if ready is None:
            ready = op if not step.ready else step.factory()
            ready.setup(device)
            step.ready[device] = ready
        out.append((device, ready))
    return out


class LocalEngine(Engine):
    """Runs a plan in this process with one thread per stage."""

    name = "local"

    def execute(self, plan: Plan, failures: FailureLog, stats: RunStats | None = None, progress: Callable[[int], Any] | None = None) -> Iterator[Chunk]:
        run = Run()
        model_steps = [s for s in plan.steps if is_batched(s)]
        try:
            tail = self._build(plan, failures, run, progress if model_steps else None)
            run.mark_started()
            rows_out = 0
            for keys, rows in run.drain(tail):
                if rows:
                    rows_out += len(rows)
                    if progress is not None and not model_steps:
                        progress(len(rows))
                    yield keys, rows
            run.stats.rows = rows_out
        finally:
            run.close()
            if stats is not None:
                stats.stages[:] = run.stats.stages
                stats.wall, stats.rows = run.stats.wall, run.stats.rows

    def _build(self, plan: Plan, failures: FailureLog, run: Run, progress: Callable[[int], Any] | None) -> Channel:
        channel = run.channel("source", CHANNEL_CHUNKS)
        stats = run.stage_stats(f"source {plan.source.label}")
        run.start("source", lambda: _source(plan.source, channel, stats))
        last_model = next((s for s in reversed(plan.steps) if is_batched(s)), None)
        replicas = {id(s): ready_operators(s, plan) for s in plan.steps if isinstance(s, Apply)}
        workers_default = default_workers(replicas)
        for kind, steps in segments(plan.steps):
            out = run.channel(kind, CHANNEL_CHUNKS)
            if kind == "fused":
                stage_stats = run.stage_stats(" > ".join(_label(s) for s in steps))
                ops = {id(s): replicas[id(s)][0][1] for s in steps if isinstance(s, Apply)}
                run.start("fused", _fused(steps, ops, channel, out, failures, stage_stats))
            elif kind == "pool":
                step = steps[0]
                assert isinstance(step, Apply)
                _device, op = replicas[id(step)][0]
                workers = step.options.workers or workers_default
                stage_stats = run.stage_stats(f"{step.name} ({workers} threads)")
                run.start(step.name, _pooled(step, op, workers, channel, out, failures, stage_stats, run))
            else:
                from .model_stage import start_model_stage

                step = steps[0]
                assert isinstance(step, Apply)
                start_model_stage(step, replicas[id(step)], workers_default, channel, out, failures, run, progress if step is last_model else None)
            channel = out
        return channel


def _label(step: Step) -> str:
    return step.name if isinstance(step, Apply) else step.kind


def _source(source: Source, out: Channel, stats: StageStats) -> None:
    rows_iter = iter(source.open())
    size, start = 1, 0
    while True:
        t0 = time.perf_counter()
        rows = list(itertools.islice(rows_iter, size))
        stats.busy += time.perf_counter() - t0
        if not rows:
            break
        stats.items_out += len(rows)
        if source.keyed:  # (row number, row) pairs: the source skips rows done earlier
            chunk: Chunk = ([k for k, _ in rows], [r for _, r in rows])
        else:
            chunk = (range(start, start + len(rows)), rows)
        if not out.put(chunk, stats):
            return  # the consumer is done (head)
        start += len(rows)
        size = min(size * 2, MAX_CHUNK)
    out.finish()


def _inbox(channel: Channel, stats: StageStats) -> Iterator[Chunk]:
    while True:
        chunk = channel.get(stats)
        if chunk is END:
            return
        stats.items_in += len(chunk[1])
        yield chunk


def _compose(step: Step, chunks: Iterator[Chunk], failures: FailureLog, ops: dict[int, Operator]) -> Iterator[Chunk]:
    if isinstance(step, Apply):
        return apply_items(step, ops.get(id(step), step.operator), chunks, failures)
    if isinstance(step, Filter):
        return filter_rows(step, chunks, failures)
    if isinstance(step, FlatMap):
        return flat_map_rows(step, chunks, failures)
    if isinstance(step, Batch):
        return batch_rows(step, chunks)
    if isinstance(step, Head):
        return head_rows(step, chunks)
    if isinstance(step, Project):
        return project_rows(step, chunks)
    if isinstance(step, Whole):
        return whole_rows(step, chunks)
    msg = f"the local engine cannot run a {type(step).__name__} step"
    raise EmbedflowError(msg)


def _fused(steps: list[Step], ops: dict[int, Operator], inbox: Channel, out: Channel, failures: FailureLog, stats: StageStats) -> Callable[[], None]:
    def body() -> None:
        chunks: Iterator[Chunk] = _inbox(inbox, stats)
        for step in steps:
            chunks = _compose(step, chunks, failures, ops)
        while True:
            t0, waited = time.perf_counter(), stats.wait_in
            chunk = next(chunks, None)
            stats.busy += time.perf_counter() - t0 - (stats.wait_in - waited)
            if chunk is None:
                break
            if chunk[1]:
                stats.items_out += len(chunk[1])
                if not out.put(chunk, stats):
                    break
        inbox.close()  # a head() may finish before the input does: let upstream stop
        out.finish()

    return body


def _pooled(step: Apply, op: Operator, workers: int, inbox: Channel, out: Channel, failures: FailureLog, stats: StageStats, run: Run) -> Callable[[], None]:
    """Per-item work on a thread pool, in input order.

    At most ``4 × workers`` items are in flight and results leave in chunks of at most
    ``2 × workers`` rows (at least 8): decoded images are large, so what this stage holds and
    what waits in its output channel stays a few dozen rows, whatever the input chunk size.
    """
    guard = Guard(step, step.name, failures)
    inputs, outputs = step.inputs, step.outputs
    in_flight = 4 * workers
    emit_size = max(8, 2 * workers)

    def one(key: int, row: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return write_outputs(row, inputs, outputs, op.preprocess(*read_inputs(row, inputs)))
        except Exception as exc:  # noqa: BLE001 - the step's policy decides
            return guard.handle(key, row, exc)
        finally:
            stats.busy += time.perf_counter() - t0

    def body() -> None:
        pool = ThreadPoolExecutor(workers, thread_name_prefix=f"embedflow-{step.name}")
        run.cleanups.append(lambda: pool.shutdown(wait=True, cancel_futures=True))
        pending: deque[tuple[int, Any]] = deque()  # (key, future), in input order

        def emit(count: int) -> bool:
            keys, rows = [], []
            for _ in range(count):
                key, future = pending.popleft()
                keys.append(key)
                rows.append(future.result())
            chunk = drop_skipped(keys, rows)
            stats.items_out += len(chunk[1])
            return not chunk[1] or out.put(chunk, stats)

        try:
            for keys, rows in _inbox(inbox, stats):
                for key, row in zip(keys, rows):
                    pending.append((key, pool.submit(one, key, row)))
                    while len(pending) >= in_flight or (len(pending) >= emit_size and pending[emit_size - 1][1].done()):
                        if not emit(min(emit_size, len(pending))):
                            return
            while pending:
                if not emit(min(emit_size, len(pending))):
                    return
            out.finish()
        finally:
            for _key, future in pending:
                future.cancel()
            inbox.close()

    stats.note = "busy summed over threads"
    return body
