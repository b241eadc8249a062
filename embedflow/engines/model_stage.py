"""The stage of a batchable operator: a small pipeline of its own.

::

    inbox --> [prepare]  submits preprocess(item) to a thread pool, in input order
          --> [batch]    waits for prepared items, sorts a look-ahead window by sort_key,
                         cuts batches (batch_size, max_batch_tokens), collates, pins memory
          --> [forward]  one thread per device replica: move, forward under inference_mode
                         and autocast, move the output to the CPU, postprocess
          --> [collect]  reorder buffer: rows leave in input order --> outbox

Channels between the threads are bounded, so at most a window of items plus a couple of
prepared batches are in memory at once. A failing batch is retried item by item so that one
bad input is named (or skipped under ``.safe()``) and the good ones are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..batching import Reorder, cut_window
from ..devices import autocast, move, pin
from ..errors import EmbedflowError
from ..failures import FailureLog
from ..operator import Operator
from ..plan import Apply
from ..rows import read_inputs, write_outputs
from ..scheduler import END, Channel, Run, StageStats
from .steps import SKIPPED, Guard

# The sort window of operators with sort_key: at least this many items (and 4 batches).
# Measured on 2,000 sentences with MiniLM (benchmarks/bench_text.py): a window of 4 batches
# (128 items) pads so much that it reaches ~150 sentences/s, 16 batches ~215, a 2,048-item
# window ~280 — as fast as sorting the whole input. Prepared text is a few hundred bytes an
# item, so 2,048 items stay small; the reorder buffer is bounded by the same number.
LOOKAHEAD_ITEMS = 2048
LOOKAHEAD_BATCHES = 4
PREFETCH_BATCHES = 2  # collated batches waiting for the device


def _has_sort_key(op: Operator) -> bool:
    return callable(getattr(op, "sort_key", None))


def start_model_stage(
    step: Apply,
    replicas: list[tuple[str, Operator]],
    default_workers: int,
    inbox: Channel,
    outbox: Channel,
    failures: FailureLog,
    run: Run,
    progress: Callable[[int], Any] | None = None,
) -> None:
    """Start the threads of a batchable operator's stage (see the module docstring);
    ``progress(n)`` is told of every batch the device finishes."""
    op = replicas[0][1]  # preprocess, collate and sort_key do not depend on the device
    guard = Guard(step, step.name, failures)
    size = step.options.batch_size or type(op).default_batch_size
    max_tokens = step.options.max_batch_tokens
    sort_key = op.sort_key if _has_sort_key(op) else None
    window = max(size * LOOKAHEAD_BATCHES, LOOKAHEAD_ITEMS) if sort_key is not None else size
    workers = step.options.workers or default_workers
    pin_memory = any(d.startswith("cuda") for d, _ in replicas)

    # items go to the pool in tasks of a few, not one by one: per-item queue hops would cap a
    # GPU pipeline near 100,000 items/s, and preprocess_batch (fast tokenizers) wants lists
    task = max(1, min(64, -(-size // workers)))
    prepared = run.channel(f"{step.name}/prepared", -(-(min(window, 4 * size) + size) // task))
    batches = run.channel(f"{step.name}/batches", PREFETCH_BATCHES * len(replicas))
    done = run.channel(f"{step.name}/done", 2 * len(replicas) + 2)
    s_prep = run.stage_stats(f"{step.name} preprocess ({workers} threads)")
    s_prep.note = "busy summed over threads"
    s_batch = run.stage_stats(f"{step.name} batch+collate (batch_size={size}{', sorted' if sort_key else ''})")
    s_fwd = [run.stage_stats(f"{step.name} forward [{device}]") for device, _ in replicas]
    s_out = run.stage_stats(f"{step.name} reorder")

    pool = ThreadPoolExecutor(workers, thread_name_prefix=f"embedflow-{step.name}")
    run.cleanups.append(lambda: pool.shutdown(wait=True, cancel_futures=True))
    many = getattr(op, "preprocess_batch", None)

    def prepare_one(key: int, row: Any) -> Any:
        try:
            item = op.preprocess(*read_inputs(row, step.inputs))
            return item, (sort_key(item) if sort_key is not None else 0)
        except Exception as exc:  # noqa: BLE001
            return guard.handle(key, row, exc)

    def prepare_task(keys: list[int], rows: list[Any]) -> list[Any]:
        """Prepared (item, size) pairs, or SKIPPED, for a few rows; preprocess_batch first,
        item by item when it is missing or fails (to name or skip the bad one)."""
        t0 = time.perf_counter()
        try:
            if many is not None:
                try:
                    items = many([read_inputs(row, step.inputs) for row in rows])
                    if len(items) == len(rows):
                        return [(it, sort_key(it) if sort_key is not None else 0) for it in items]
                except Exception:  # noqa: BLE001, S110 - retried item by item below
                    pass
            return [prepare_one(key, row) for key, row in zip(keys, rows)]
        finally:
            s_prep.busy += time.perf_counter() - t0

    # ---- prepare: submit in order -------------------------------------------------------
    def prepare_loop() -> None:
        seq = 0
        try:
            while True:
                chunk = inbox.get(s_prep)
                if chunk is END:
                    break
                keys, rows = list(chunk[0]), chunk[1]
                s_prep.items_in += len(rows)
                for start in range(0, len(rows), task):
                    k, r = keys[start : start + task], rows[start : start + task]
                    if not prepared.put((seq, k, r, pool.submit(prepare_task, k, r)), s_prep):
                        return
                    seq += len(r)
                    s_prep.items_out += len(r)
            prepared.finish()
        finally:
            inbox.close()

    # ---- batch: window, sort, cut, collate ----------------------------------------------
    def flush(items: list[tuple[int, int, Any, Any]]) -> None:
        t0 = time.perf_counter()
        key_fn = (lambda it: it[3][1]) if sort_key is not None else None
        for group in cut_window(items, size, key=key_fn, max_tokens=max_tokens if sort_key else None):
            collated = op.collate([it[3][0] for it in group])
            if pin_memory:
                collated = pin(collated)
            s_batch.busy += time.perf_counter() - t0
            s_batch.items_out += len(group)
            batches.put((group, collated), s_batch)
            t0 = time.perf_counter()
        s_batch.busy += time.perf_counter() - t0

    def batch_loop() -> None:
        items: list[tuple[int, int, Any, Any]] = []
        while True:
            entry = prepared.get(s_batch)
            if entry is END:
                break
            first, keys, rows, future = entry
            t0 = time.perf_counter()
            results = future.result()
            s_batch.wait_in += time.perf_counter() - t0  # waiting for the pool is waiting for input
            s_batch.items_in += len(rows)
            skipped = []
            for seq, key, row, item in zip(range(first, first + len(rows)), keys, rows, results):
                if item is SKIPPED:
                    skipped.append((seq, SKIPPED))
                    continue
                items.append((seq, key, row, item))
                if len(items) >= window:
                    flush(items)
                    items = []
            if skipped:
                done.put((skipped, None), s_batch)
        if items:
            flush(items)
        for _ in replicas:
            batches.finish()

    # ---- forward: one thread per device replica ---------------------------------------------
    def forward_loop(device: str, replica: Operator, stats: StageStats) -> None:

        context = autocast(device, step.options.dtype)

        def run_batch(collated: Any, n: int) -> list[Any]:
            return forward_batch(replica, step.name, collated, n, device, context, non_blocking=pin_memory)

        while True:
            entry = batches.get(stats)
            if entry is END:
                break
            group, collated = entry
            t0 = time.perf_counter()
            stats.items_in += len(group)
            try:
                results = run_batch(collated, len(group))
            except EmbedflowError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the bad item, keep the good ones
                results = _one_by_one(group, exc, run_batch, replica, guard)
            pairs = [
                (seq, SKIPPED if r is SKIPPED else write_outputs(row, step.inputs, step.outputs, r))
                for (seq, _key, row, _item), r in zip(group, results)
            ]
            stats.busy += time.perf_counter() - t0
            stats.items_out += len(group)
            if progress is not None:
                progress(len(group))
            done.put((pairs, [key for _s, key, _r, _i in group]), stats)
        done.finish()

    # ---- collect: restore input order ---------------------------------------------------------
    def collect_loop() -> None:
        reorder = Reorder()
        keys_by_seq: dict[int, int] = {}
        ends = 0
        while ends < len(replicas):
            entry = done.get(s_out)
            if entry is END:
                ends += 1
                continue
            t0 = time.perf_counter()
            pairs, keys = entry
            s_out.items_in += len(pairs)
            if keys is not None:
                keys_by_seq.update((seq, key) for (seq, _), key in zip(pairs, keys))
            first = reorder.next
            released = reorder.add_many(pairs)
            out_keys, out_rows = [], []
            for seq, row in zip(range(first, first + len(released)), released):
                key = keys_by_seq.pop(seq, None)
                if row is not SKIPPED:
                    out_keys.append(key)
                    out_rows.append(row)
            s_out.busy += time.perf_counter() - t0
            if out_rows:
                s_out.items_out += len(out_rows)
                if not outbox.put((out_keys, out_rows), s_out):
                    done.close()
                    return
        outbox.finish()

    run.start(f"{step.name}-prepare", prepare_loop)
    run.start(f"{step.name}-batch", batch_loop)
    for (device, replica), stats in zip(replicas, s_fwd):
        run.start(f"{step.name}-forward-{device}", lambda d=device, r=replica, s=stats: forward_loop(d, r, s))
    run.start(f"{step.name}-collect", collect_loop)


def forward_batch(op: Operator, name: str, collated: Any, n: int, device: str, context: Callable[[], Any], non_blocking: bool = False) -> list[Any]:
    """One batch on the device: move it there, ``forward`` under ``inference_mode`` and
    autocast, move the output back to the CPU, ``postprocess`` to ``n`` results. Shared by the
    local and the Ray engine."""
    import torch

    with torch.inference_mode(), context():
        output = move(op.forward(move(collated, device, non_blocking=non_blocking)), "cpu")
    results = op.postprocess(output)
    if len(results) != n:
        msg = f"{name}.postprocess returned {len(results)} results for a batch of {n}"
        raise EmbedflowError(msg)
    return results


def _one_by_one(group: list[tuple[int, int, Any, Any]], exc: Exception, run_batch: Any, replica: Operator, guard: Guard) -> list[Any]:
    """After a batch failed: run its items alone; a failing one is raised or skipped."""
    if len(group) == 1:
        _seq, key, row, _item = group[0]
        return [guard.handle(key, row, exc)]
    results = []
    for _seq, key, row, (item, _size) in group:
        try:
            results.append(run_batch(replica.collate([item]), 1)[0])
        except EmbedflowError:
            raise
        except Exception as item_exc:  # noqa: BLE001
            results.append(guard.handle(key, row, item_exc))
    return results

