"""The local engine's threads around the model-batching routine (:mod:`..batching`).

::

    inbox --> [prepare]  submits prepare(rows) to a thread pool, a few rows per task, in order
                         (each thread hands its rows to a worker process when the operator
                         prepares in processes: :mod:`..prepare_processes`)
          --> [batch]    waits for prepared items, fills a window, cuts and collates batches
                         (pinned memory for a GPU)
          --> [stage]    per replica, for an operator with ``prepare_on_device`` (images decoded
                         on the GPU): the batch to the device and through it, on a stream of its
                         own, handed on with an event — the forward thread never waits for it
          --> [forward]  one thread per device replica, the next batch already prepared
          --> [collect]  a reorder buffer when order matters, else rows leave as they finish
          --> outbox

Channels between the threads are bounded, so at most a window of items plus a couple of
prepared batches are in memory at once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...hooks import NamesItsBackend, PreparesOnDevice
from ...plan import ModelStage
from ..batching import InFlight, ModelBatcher, Prepared, Replica, Staged
from ..devices import bind_device, pin
from ..failures import FailureLog
from ..groups import Unprepared, numbers_of
from ..packing import Cut, Packed, unpacked
from ..prepare_processes import PreparePool, WorkerLost
from ..preprocess import Raised, preprocess_items
from ..stats import StageStats
from ..steps import SKIPPED
from .reorder import Reorder
from .scheduler import END, Channel, Run, SourceInbox

PREFETCH_BATCHES = 2  # collated batches waiting for the device
# worker processes cut and collate whole windows (packing.py); False: they send prepared rows back
# (the way before issue 22, kept for benchmarks/bench_host.py to compare in one run)
PACK_IN_WORKERS = True


@dataclass
class Batched:
    """What a prepare task gives when a worker process cut and collated the rows: the rows
    skipped under ``.safe()``, the batches ((seqs, Prepared group, collated)) and the rows whose
    batch did not collate there (prepared here: (seq, Prepared))."""

    skipped: list[int] = field(default_factory=list)
    batches: list[tuple[list[int], Sequence[Prepared], Any]] = field(default_factory=list)
    loose: list[tuple[int, Any]] = field(default_factory=list)


def _backend(replica: Replica) -> str:
    """``, onnx`` when an operator says which backend it runs (``backend_used``)."""
    used = replica.op.backend_used if isinstance(replica.op, NamesItsBackend) else None
    return f", {used}" if used else ""


class ModelStageThreads:
    """The threads of one model stage (see the module docstring)."""

    def __init__(
        self,
        stage: ModelStage,
        replicas: list[Replica],
        workers: int,
        inbox: Channel | SourceInbox,
        outbox: Channel,
        failures: FailureLog,
        run: Run,
        progress: Callable[[int], Any] | None,
        processes: PreparePool | None = None,
    ):
        self.stage, self.replicas, self.inbox, self.outbox, self.progress = stage, replicas, inbox, outbox, progress
        self.processes = processes
        self.batcher = ModelBatcher(stage, replicas[0].op, failures)
        name, size = stage.step.label, stage.batch_size
        self.pin_memory = any(r.device.startswith("cuda") for r in replicas)
        # rows go to the pool in tasks of a few, not one by one: per-item queue hops would cap a
        # GPU pipeline near 100,000 items/s, and preprocess_batch (fast tokenizers) wants lists;
        # a worker process gets 64 at once (measured on an H200: 16 texts per call 30,508/s, 64: 45,812/s)
        self.task = min(64, size) if processes is not None else max(1, min(64, -(-size // workers)))
        in_flight = -(-(min(stage.window, 4 * size) + size) // self.task)
        # with worker processes a task is a whole window, sorted, cut and collated there (packing.py):
        # the main process then moves batches, not rows; one window per process in flight, and one more
        self.packed = processes is not None and PACK_IN_WORKERS
        if self.packed:
            self.task, in_flight = stage.window, processes.processes + 1  # type: ignore[union-attr]
        self.prepared = run.channel(f"{name}/prepared", in_flight)
        self.batches = run.channel(f"{name}/batches", PREFETCH_BATCHES * len(replicas))
        self.done = run.channel(f"{name}/done", 2 * len(replicas) + 2)
        helpers = (
            f"{workers} threads"
            if processes is None
            else f"{processes.processes} processes" + (f", {workers} threads" if workers != processes.processes else "")
        )
        self.s_prep = run.stage_stats(f"{name} preprocess ({helpers})")
        self.s_prep.note = "busy summed over threads"
        self.s_batch = run.stage_stats(f"{name} batch+collate (batch_size={size}{', sorted' if stage.sorts else ''})")
        self.staging = isinstance(replicas[0].op, PreparesOnDevice)
        self.staged = [run.channel(f"{name}/staged-{r.device}", PREFETCH_BATCHES) for r in replicas] if self.staging else []
        self.s_stage = [run.stage_stats(f"{name} to the device [{r.device}]") for r in replicas] if self.staging else []
        self.s_fwd = [run.stage_stats(f"{name} forward [{r.device}{_backend(r)}]") for r in replicas]
        self.s_out = run.stage_stats(f"{name} {'reorder' if stage.ordered else 'collect (as finished)'}")
        self.pool = run.thread_pool(workers, name)

    def start(self, run: Run) -> None:
        name = self.stage.step.label
        run.start(f"{name}-prepare", self.prepare_loop)
        run.start(f"{name}-batch", self.batch_loop)
        for i, (replica, stats) in enumerate(zip(self.replicas, self.s_fwd)):
            source = self.staged[i] if self.staging else self.batches
            if self.staging:
                run.start(f"{name}-stage-{replica.device}", functools.partial(self.stage_loop, replica, source, self.s_stage[i]))
            run.start(f"{name}-forward-{replica.device}", functools.partial(self.forward_loop, replica, source, stats))
        run.start(f"{name}-collect", self.collect_loop)

    # ---- prepare: rows to the pool, in order ---------------------------------------------
    def _prepare_task(self, first: int, numbers: list[int], rows: list[Any]) -> list[Any] | Batched:
        """Prepared items for some rows (or, from worker processes, their batches: :class:`Batched`)."""
        t0 = time.perf_counter()
        try:
            if self.processes is None:
                return self.batcher.prepare(numbers, rows)
            inputs = self.batcher.inputs(rows)
            batcher = self.batcher
            request = Cut(inputs, batcher.batch_size, batcher.max_tokens, batcher.sort_key is not None) if self.packed else inputs
            try:
                items = self.processes.prepare(request)
            except WorkerLost:
                items = None  # prepared here instead: no row is lost
            if isinstance(items, Packed):
                return self._batched(first, numbers, rows, items)
            if items is None:
                items = preprocess_items(self.batcher.op, inputs)
            return self.batcher.sized(numbers, rows, items)
        finally:
            self.s_prep.busy += time.perf_counter() - t0

    def _batched(self, first: int, numbers: list[int], rows: list[Any], packed: Packed) -> Batched:
        """A worker's batches as the forward threads take them: (seq, Prepared) groups — the item
        stays in the worker (None: a retry prepares it again here) — collated and pinned."""
        out = Batched()
        for i, raised in packed.errors:
            self.batcher.guard.handle(numbers[i], rows[i], raised.error)  # raises, or the row is skipped
            out.skipped.append(first + i)
        if packed.unbatched:
            out.loose = list(
                zip(
                    [first + i for i in packed.unbatched],
                    self.batcher.prepare([numbers[i] for i in packed.unbatched], [rows[i] for i in packed.unbatched]),
                )
            )
        for positions, collated in packed.batches:
            at = positions.tolist()
            group = Unprepared([numbers[i] for i in at], [rows[i] for i in at])
            collated = unpacked(collated)
            out.batches.append(([first + i for i in at], group, pin(collated) if self.pin_memory else collated))
        return out

    def prepare_loop(self) -> None:
        """Rows to the pool in tasks of ``task`` rows, in order; with worker processes a task is
        a whole sort window, gathered over the source's chunks (the last one may be shorter)."""
        seq, task, stats = 0, self.task, self.s_prep
        numbers: list[int] = []
        rows: list[Any] = []
        try:
            while True:
                chunk = self.inbox.get(stats)
                end = chunk is END
                if not end:
                    numbers.extend(chunk[0])
                    rows.extend(chunk[1])
                    stats.items_in += len(chunk[1])
                while rows and (len(rows) >= task or end or not self.packed):
                    n, r = numbers[:task], rows[:task]
                    del numbers[:task], rows[:task]
                    if not self.prepared.put((seq, self.pool.submit(self._prepare_task, seq, n, r)), stats):
                        return
                    seq += len(r)
                    stats.items_out += len(r)
                if end:
                    break
            self.prepared.finish()
        finally:
            self.inbox.close()

    # ---- batch: a window of prepared items, cut and collated ------------------------------
    def _flush(self, items: list[tuple[int, Prepared]]) -> None:
        stats = self.s_batch
        t0 = time.perf_counter()
        for group in self.batcher.cut(items, lambda sp: sp[1][3]):
            collated = self.batcher.collate([p for _seq, p in group])
            if self.pin_memory:
                collated = pin(collated)
            stats.busy += time.perf_counter() - t0
            stats.items_out += len(group)
            self.batches.put(([seq for seq, _p in group], [p for _seq, p in group], collated, None), stats)  # None: not staged yet
            t0 = time.perf_counter()
        stats.busy += time.perf_counter() - t0

    def batch_loop(self) -> None:
        items: list[tuple[int, Prepared]] = []
        stats = self.s_batch
        while True:
            entry = self.prepared.get(stats)
            if entry is END:
                break
            first, future = entry
            t0 = time.perf_counter()
            results = future.result()
            stats.wait_in += time.perf_counter() - t0  # waiting for the pool is waiting for input
            if isinstance(results, Batched):  # cut and collated in a worker process: sent on as they are
                if results.skipped:
                    self.done.put(_skipped(results.skipped), stats)
                for seqs, group, collated in results.batches:
                    stats.items_in += len(group)
                    stats.items_out += len(group)
                    self.batches.put((seqs, group, collated, None), stats)
                items.extend(sp for sp in results.loose if sp[1] is not SKIPPED)  # rows whose batch did not collate there
                if any(sp[1] is SKIPPED for sp in results.loose):
                    self.done.put(_skipped([seq for seq, p in results.loose if p is SKIPPED]), stats)
                stats.items_in += len(results.skipped) + len(results.loose)
                if len(items) >= self.stage.window:
                    self._flush(items)
                    items = []
                continue
            stats.items_in += len(results)
            skipped = []
            for seq, item in enumerate(results, first):
                if item is SKIPPED:
                    skipped.append(seq)
                    continue
                items.append((seq, item))
                if len(items) >= self.stage.window:
                    self._flush(items)
                    items = []
            if skipped:
                self.done.put(_skipped(skipped), stats)
        if items:
            self._flush(items)
        for _ in self.replicas:
            self.batches.finish()

    # ---- stage: to the device and through prepare_on_device, one thread per replica ---------
    def stage_loop(self, replica: Replica, out: Channel, stats: StageStats) -> None:
        """Batches to ``replica``'s device and through the operator's ``prepare_on_device``, on
        the replica's staging stream; an error travels on to the forward thread, which retries
        the batch item by item there (to name or skip the bad row)."""
        bind_device(replica.device)
        while True:
            entry = self.batches.get(stats)
            if entry is END:
                break
            seqs, group, collated, _ = entry
            t0 = time.perf_counter()
            stats.items_in += len(group)
            staged: Staged | Raised
            try:
                staged = self.batcher.stage(replica, collated)
            except Exception as exc:  # noqa: BLE001 - the forward thread retries the batch item by item
                staged = Raised(exc)
            stats.busy += time.perf_counter() - t0
            stats.items_out += len(group)
            if not out.put((seqs, group, collated, staged), stats):
                return
        out.finish()

    # ---- forward: one thread per replica ---------------------------------------------------
    def forward_loop(self, replica: Replica, source: Channel, stats: StageStats) -> None:
        """On CUDA the next batch is launched before this one is finished (waited for and
        postprocessed), so the device always has work queued; elsewhere one at a time."""
        bind_device(replica.device)  # this thread's current CUDA device is its replica's
        overlap = replica.device.startswith("cuda")
        pending: tuple[list[int], InFlight] | None = None
        while True:
            entry = source.get(stats)
            if entry is END:
                break
            seqs, group, collated, staged = entry  # staged: None, or what the staging thread made of it
            t0 = time.perf_counter()
            stats.items_in += len(group)
            launched = (seqs, self.batcher.begin(replica, group, collated, staged))
            del collated, staged
            if pending is not None:
                self._complete(replica, *pending, stats)
            pending = launched
            if not overlap:
                self._complete(replica, *pending, stats)
                pending = None
            stats.busy += time.perf_counter() - t0
        if pending is not None:
            self._complete(replica, *pending, stats)
        self.done.finish()

    def _complete(self, replica: Replica, seqs: list[int], flight: InFlight, stats: StageStats) -> None:
        outputs = self.batcher.complete(replica, flight)
        stats.items_out += len(seqs)
        if self.progress is not None:
            self.progress(len(seqs))
        skipped = sum(1 for o in outputs if o is SKIPPED)  # rows that failed under .safe(): never passed on
        self.done.put(Done(seqs, numbers_of(flight.group), outputs, skipped), stats)

    # ---- collect: in input order, or as rows finish ----------------------------------------
    def collect_loop(self) -> None:
        reorder = Reorder() if self.stage.ordered else None
        stats, ends, skipped = self.s_out, 0, 0  # SKIPPED rows received and not yet released
        while ends < len(self.replicas):
            entry = self.done.get(stats)
            if entry is END:
                ends += 1
                continue
            t0 = time.perf_counter()
            stats.items_in += len(entry.seqs)
            skipped += entry.skipped
            if reorder is not None:
                numbers, outputs = reorder.add_rows(entry.seqs, entry.numbers, entry.outputs)
            else:
                numbers, outputs = entry.numbers, entry.outputs
            if skipped and outputs:  # the rare case: drop the rows skipped under .safe()
                kept = [(n, o) for n, o in zip(numbers, outputs) if o is not SKIPPED]
                skipped -= len(outputs) - len(kept)
                numbers, outputs = [n for n, _ in kept], [o for _, o in kept]
            stats.busy += time.perf_counter() - t0
            if outputs:
                stats.items_out += len(outputs)
                if not self.outbox.put((numbers, outputs), stats):
                    self.done.close()
                    return
        self.outbox.finish()


@dataclass
class Done:
    """Rows out of the forward: their places in the stage's input order, source row numbers,
    outputs, and how many of those are SKIPPED (rows that failed under ``.safe()``)."""

    seqs: list[int]
    numbers: list[int]
    outputs: list[Any]
    skipped: int = 0


def _skipped(seqs: list[int]) -> Done:
    """Rows skipped under ``.safe()`` before the forward, as :class:`Done` rows."""
    return Done(seqs, [-1] * len(seqs), [SKIPPED] * len(seqs), len(seqs))
