"""The local engine: each physical stage in its own thread(s), joined by bounded channels, in
this process.

* the **source** reads its parts in order, in chunks of 1, 2, 4 ... 256 rows (the first rows
  arrive at once);
* a **cheap** stage (fused functions, filter, flat_map, select, batch) works chunk by chunk in
  one thread; so do **limit** and **whole** stages;
* a **pool** stage runs its operator on a thread pool of ``workers`` threads (default: the
  cores this process may use, less torch's threads when a model runs on the CPU);
* a **model** stage becomes a small pipeline of threads around the batching routine
  (:mod:`.model_stage`).

>>> import embedflow as ef
>>> ef.dc(range(5)).map(lambda x: x * x).filter(lambda x: x % 2 == 0).to_list()
[0, 4, 16]
"""

from __future__ import annotations

import functools
import itertools
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterator
from typing import Any

from ...errors import user_stacklevel
from ...hooks import CountsEvents, PreparesAlone, WarnsAfterRun
from ...operator import Operator, expecting
from ...plan import Apply, CheapStage, Head, LimitStage, ModelStage, PhysicalPlan, PoolStage, Stage, WholeStage
from .. import runtimes
from ..base import Engine
from ..batching import Replica, for_device, make_replica
from ..devices import default_workers, resolve_devices
from ..failures import FailureLog
from ..prepare_processes import existing_pool, pool_for, rebuilt_by_name
from ..replicas import ready
from ..stats import RunStats, StageStats
from ..steps import Chunk, drop_bad_rows, drop_skipped, head_rows, item_applier, run_cheap, whole_rows
from .model_stage import ModelStageThreads
from .scheduler import END, Channel, Run, SourceInbox

# rows per chunk once a run is going: each chunk costs a few thread hand-offs (the GIL passed
# between the source, the stages and the consumer), ~60 µs, so 256-row chunks made five .map
# steps 2.3x plain generators, 1,024-row ones 1.37x, and 1.27x once the first cheap steps read
# the source in their own thread (benchmarks/bench_overhead.py, medians of 5); stages that hold
# large rows (decoded images) emit their own small chunks whatever comes in
MAX_CHUNK = 1024
CHANNEL_CHUNKS = 4  # chunks buffered between two stages


def chunk_sizes() -> Iterator[int]:
    """1, 2, 4 ... 1024, 1024, ...: the first rows leave at once, later chunks are large."""
    return itertools.chain((1 << i for i in range(MAX_CHUNK.bit_length() - 1)), itertools.repeat(MAX_CHUNK))


class LocalEngine(Engine):
    """Runs a physical plan in this process, with threads."""

    name = "local"

    def run(
        self, physical: PhysicalPlan, failures: FailureLog, stats: RunStats | None = None, progress: Callable[[int], Any] | None = None
    ) -> Generator[Chunk, None, None]:
        run = Run()
        try:
            tail = self._build(physical, failures, run, progress)
            run.mark_started()
            rows_out = 0
            for numbers, rows in run.drain(tail):
                if rows:
                    rows_out += len(rows)
                    if progress is not None and not physical.model_stages:
                        progress(len(rows))
                    yield numbers, rows
            run.stats.rows = rows_out
            _warn_run_notes(run.replicas)
        finally:
            run.close()
            if stats is not None:
                stats.stages[:] = run.stats.stages
                stats.wall, stats.rows = run.stats.wall, run.stats.rows

    def _build(self, physical: PhysicalPlan, failures: FailureLog, run: Run, progress: Callable[[int], Any] | None) -> Channel:
        runtimes.check(physical, "local")
        with expecting(physical.source.rows_to_read):  # a short run may skip an export (expected_items)
            replicas = {id(s): self._replicas(s) for s in physical.model_stages}
        run.replicas = [r for reps in replicas.values() for r in reps]
        cpu_models = any(r.device == "cpu" for reps in replicas.values() for r in reps)
        workers_default = default_workers(cpu_models)
        source_stats = run.stage_stats(f"source {physical.source.label}")
        chunks = _source_chunks(physical, source_stats, failures)
        source: Iterator[Chunk] | None = chunks
        groups = _threads(physical.stages)
        if not groups or not isinstance(groups[0][0], (CheapStage, LimitStage, WholeStage, ModelStage)):
            channel = run.channel("source", CHANNEL_CHUNKS)
            run.start("source", functools.partial(_source, chunks, channel, source_stats))
            source = None
        for group in groups:
            out = run.channel(type(group[0]).__name__, CHANNEL_CHUNKS)
            stage = group[0]
            if isinstance(stage, ModelStage):
                reps = replicas[id(stage)]
                processes = pool_for(stage.step, reps[0].op, reps[0].device, stage.processes)
                workers = stage.workers or (processes.processes if processes is not None else workers_default)
                sized = for_device(stage, reps[0].device)  # GPU-sized batches where the user set none
                feed = progress if stage.reports_progress else None
                # a model stage that comes first reads the source in its prepare thread
                inbox = channel if source is None else SourceInbox(run, source)
                source = None
                threads = ModelStageThreads(sized, reps, workers, inbox, out, failures, run, feed, processes)
                threads.start(run)
            elif isinstance(stage, PoolStage):
                _start_pool(stage, stage.workers or workers_default, channel, out, failures, run)
            else:
                labels, fns = zip(*(_chunkwise(s, failures) for s in group))
                stats = run.stage_stats(" > ".join(labels))
                # the first cheap steps read the source in their own thread: one thread hand-off
                # less per chunk (five .map steps: 1.37x plain generators with the source apart)
                run.start("cheap", _chunkwise_body(_compose(fns), channel if source is None else source, out, stats))
                source = None
            channel = out
        return channel

    @staticmethod
    def _replicas(stage: ModelStage) -> list[Replica]:
        devices = resolve_devices(stage.device)
        pinned = any(d.startswith("cuda") for d in devices)

        started: list[Any] = []

        def start_workers(device: str, op: Operator) -> None:  # while the weights load, not after
            if device == devices[0] and isinstance(op, PreparesAlone) and rebuilt_by_name(stage.step):
                started.append(pool_for(stage.step, op, device, stage.processes))

        try:
            built = ready(stage.step, devices, start_workers)
        except BaseException:
            for pool in started:  # the model did not load: its workers end now, not when it is collected
                if pool is not None:
                    pool.close()
            raise
        return [make_replica(device, op, stage.dtype, pinned, stage.step.label) for device, op in built]


def _warn_run_notes(replicas: list[Replica]) -> None:
    """Once per run, what an operator has to say of it (``run_warnings()``: e.g. how many
    texts were cut to the model's length limit)."""
    for replica in replicas:
        pool = existing_pool(replica.op)
        if pool is not None and isinstance(replica.op, CountsEvents):
            replica.op.run_counts.update(pool.take_counts())
        for message in replica.op.run_warnings() if isinstance(replica.op, WarnsAfterRun) else ():
            warnings.warn(message, UserWarning, stacklevel=user_stacklevel())


# --------------------------------------------------------------------------- the table
def _threads(stages: tuple[Stage, ...]) -> list[list[Stage]]:
    """Stages grouped by thread: consecutive chunk-wise stages (cheap, limit, whole) share one,
    so that a ``head`` stops the steps before it at once."""
    groups: list[list[Stage]] = []
    for stage in stages:
        chunkwise = isinstance(stage, (CheapStage, LimitStage, WholeStage))
        if chunkwise and groups and isinstance(groups[-1][-1], (CheapStage, LimitStage, WholeStage)):
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def _compose(fns: tuple[Callable[[Iterator[Chunk]], Iterator[Chunk]], ...]) -> Callable[[Iterator[Chunk]], Iterator[Chunk]]:
    def composed(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        for fn in fns:
            chunks = fn(chunks)
        return chunks

    return composed


def _chunkwise(stage: Stage, failures: FailureLog) -> tuple[str, Callable[[Iterator[Chunk]], Iterator[Chunk]]]:
    """(label, chunks -> chunks) for the stages that run chunk by chunk in one thread."""
    if isinstance(stage, CheapStage):
        ops = {id(s): op for s in stage.steps if isinstance(s, Apply) for _d, op in ready(s, ["cpu"])}
        return " > ".join(s.label for s in stage.steps), lambda chunks: run_cheap(stage.steps, ops, chunks, failures)
    if isinstance(stage, LimitStage):
        head = Head(n=stage.n)
        return f"head {stage.n}", lambda chunks: head_rows(head, chunks)
    if isinstance(stage, WholeStage):
        return stage.step.label, lambda chunks: whole_rows(stage.step, chunks)
    msg = f"the local engine has no runtime for a {type(stage).__name__}"
    raise TypeError(msg)


# --------------------------------------------------------------------------- stage bodies
def _source_chunks(physical: PhysicalPlan, stats: StageStats, failures: FailureLog) -> Iterator[Chunk]:
    """The source's chunks (rows that fail to read dropped under ``.safe()``), growing in size."""
    sizes = chunk_sizes()
    label = physical.source.kind
    for part in physical.source.parts():
        chunks = part.chunks(sizes)
        try:
            while True:
                t0 = time.perf_counter()
                chunk = next(chunks, None)
                if chunk is not None and part.may_fail:
                    chunk = drop_bad_rows(chunk[0], chunk[1], physical.source_errors, label, failures)
                stats.busy += time.perf_counter() - t0
                if chunk is None:
                    break
                stats.items_out += len(chunk[1])
                if chunk[1]:
                    yield chunk
        finally:
            chunks.close()  # a consumer done early (head) closes the part's reader at once


def _source(chunks: Iterator[Chunk], out: Channel, stats: StageStats) -> None:
    """The source in a thread of its own, into ``out`` (when a model or pool stage reads it)."""
    try:
        for chunk in chunks:
            if not out.put(chunk, stats):
                return  # the consumer is done (head)
    finally:
        chunks.close()  # type: ignore[attr-defined]
    out.finish()


def _inbox(channel: Channel, stats: StageStats) -> Iterator[Chunk]:
    while True:
        chunk = channel.get(stats)
        if chunk is END:
            return
        stats.items_in += len(chunk[1])
        yield chunk


def _chunkwise_body(
    fn: Callable[[Iterator[Chunk]], Iterator[Chunk]], inbox: Channel | Iterator[Chunk], out: Channel, stats: StageStats
) -> Callable[[], None]:
    """A thread's body: chunks from ``inbox`` (a channel, or the source itself) through ``fn``."""

    def body() -> None:
        chunks = fn(_inbox(inbox, stats) if isinstance(inbox, Channel) else _counted(inbox, stats))
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
        if isinstance(inbox, Channel):
            inbox.close()  # a head() may finish before the input does: let upstream stop
        else:
            inbox.close()  # type: ignore[attr-defined]  # the source's reader, closed at once
        out.finish()

    return body


def _counted(chunks: Iterator[Chunk], stats: StageStats) -> Iterator[Chunk]:
    """The source's chunks read in a stage's thread: the time reading them is the stage's wait
    for input (the source's own busy time is counted on the source's line)."""
    while True:
        t0 = time.perf_counter()
        chunk = next(chunks, None)
        stats.wait_in += time.perf_counter() - t0
        if chunk is None:
            return
        stats.items_in += len(chunk[1])
        yield chunk


def _start_pool(stage: PoolStage, workers: int, inbox: Channel, out: Channel, failures: FailureLog, run: Run) -> None:
    """Per-item work on a thread pool, in input order.

    At most ``4 × workers`` items are in flight and results leave in chunks of at most
    ``2 × workers`` rows (at least 8): decoded images are large, so what this stage holds and
    what waits in its output channel stays a few dozen rows, whatever the input chunk size.
    """
    step = stage.step
    ((_device, op),) = ready(step, ["cpu"])
    apply = item_applier(step, op, failures)
    in_flight, emit_size = 4 * workers, max(8, 2 * workers)
    stats = run.stage_stats(f"{step.label} ({workers} threads)")
    stats.note = "busy summed over threads"

    def one(number: int, row: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return apply((number,), [row])[0]
        finally:
            stats.busy += time.perf_counter() - t0

    def body() -> None:
        pool = run.thread_pool(workers, step.label)
        pending: deque[tuple[int, Any]] = deque()  # (row number, future), in input order

        def emit(count: int) -> bool:
            numbers, rows = [], []
            for _ in range(count):
                number, future = pending.popleft()
                numbers.append(number)
                rows.append(future.result())
            chunk = drop_skipped(numbers, rows)
            stats.items_out += len(chunk[1])
            return not chunk[1] or out.put(chunk, stats)

        try:
            for numbers, rows in _inbox(inbox, stats):
                for number, row in zip(numbers, rows):
                    pending.append((number, pool.submit(one, number, row)))
                    while len(pending) >= in_flight or (len(pending) >= emit_size and pending[emit_size - 1][1].done()):
                        if not emit(min(emit_size, len(pending))):
                            return
            while pending:
                if not emit(min(emit_size, len(pending))):
                    return
            out.finish()
        finally:
            for _number, future in pending:
                future.cancel()
            inbox.close()

    run.start(step.label, body)
