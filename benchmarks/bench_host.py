"""Host cost per text: the main process's CPU time for the text chain when tokenizer worker
processes prepare the texts and the forward is a no-op of the right output shape (zeros of
(rows, 384)) — what the engine itself costs per text, the ceiling it puts on a GPU. In one run:
workers sending back one prepared item per text (the way before issue 22: unpickled, sized,
windowed, sorted, cut and collated in the main process) against workers sending back whole
collated batches (embedflow/engines/packing.py). Best of ``--repeats`` runs each, after a
warm-up run (the workers started, the tokenizer loaded).

    python benchmarks/bench_host.py [--texts 50000] [--processes 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import collections
import gc
import resource
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, table
from gpu_check import MINILM, corpus

import embedflow as ef
from embedflow.engines.local import model_stage
from embedflow_operators.text_embedding.transformers import TransformersTextEmbedding

HIDDEN = 384


def no_forward(self, batch):
    """The forward replaced: zeros of the shape MiniLM's pooled output has."""
    return torch.zeros(batch["input_ids"].shape[0], HIDDEN)


THREAD_CPU: collections.Counter = collections.Counter()  # CPU seconds by engine thread (its name's last part)


def _counting_thread_cpu() -> None:
    """Every thread adds its CPU time to THREAD_CPU when it ends; the garbage collector's
    passes are counted as "gc" (whichever thread ran them)."""
    run, lock = threading.Thread.run, threading.Lock()

    def counted(self):
        try:
            run(self)
        finally:
            with lock:
                THREAD_CPU[self.name.rsplit("-", 1)[-1].rstrip("0123456789_") or self.name] += time.thread_time()

    started = {}

    def on_gc(phase, _info):
        ident = threading.get_ident()
        if phase == "start":
            started[ident] = time.thread_time()
        else:
            THREAD_CPU["gc"] += time.thread_time() - started.pop(ident, time.thread_time())

    threading.Thread.run = counted
    gc.callbacks.append(on_gc)


def measure(chain, n, repeats):
    """Best (main-process CPU µs per text, user, system, wall µs per text, CPU µs per text by
    thread) of ``repeats`` runs."""
    chain.to_list()  # warm-up: workers started, first windows in
    best = None
    for _ in range(repeats):
        THREAD_CPU.clear()
        r0, c0, t0, m0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter(), time.thread_time()
        out = chain.to_list()
        r1, c1, t1, m1 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter(), time.thread_time()
        time.sleep(0.2)  # the run's threads have ended and counted themselves
        assert len(out) == n
        threads = {"caller": m1 - m0, **THREAD_CPU}
        row = (
            1e6 * (c1 - c0) / n,
            1e6 * (r1.ru_utime - r0.ru_utime) / n,
            1e6 * (r1.ru_stime - r0.ru_stime) / n,
            1e6 * (t1 - t0) / n,
            {k: 1e6 * v / n for k, v in sorted(threads.items(), key=lambda kv: -kv[1])},
        )
        best = row if best is None or row[0] < best[0] else best
    return best


def forward_alone(n, batch=256, repeats=3):
    """CPU µs per text of the no-op forward itself (to take out of the totals)."""
    fake = {"input_ids": torch.zeros(batch, 32, dtype=torch.int64)}
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        for _ in range(-(-n // batch)):
            no_forward(None, fake)
        best = min(best, time.process_time() - c0)
    return 1e6 * best / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument(
        "--processes", type=int, default=1, help="tokenizer worker processes (1 leaves this 2-core machine a core for the main process)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = corpus(args.texts)
    _counting_thread_cpu()
    TransformersTextEmbedding.forward = no_forward
    chain = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", processes=args.processes, batch_size=256)
    chain = chain.set_progress(False)
    chain.head(512).to_list()  # loads the tokenizer, starts the workers
    time.sleep(5)  # the workers are ready before anything is timed
    forward = forward_alone(args.texts)
    rows, by_thread = [], ""
    for label, packed in (("one prepared item per text (before)", False), ("collated batches (now)", True)):
        model_stage.PACK_IN_WORKERS = packed
        cpu, user, system, wall, threads = measure(chain, args.texts, args.repeats)
        by_thread = ", ".join(f"{name} {us:.2f}" for name, us in threads.items() if us >= 0.05)
        rows.append([label, f"{cpu:.1f}", f"{cpu - forward:.1f}", f"{user:.1f}", f"{system:.1f}", f"{wall:.1f}", f"{1e6 / wall:,.0f}"])
    model_stage.PACK_IN_WORKERS = True
    report(
        f"Host cost per text: MiniLM tokenizer in {args.processes} worker process(es), no-op forward, {args.texts:,} texts",
        table(["workers send back", "main CPU µs/text", "… outside the forward", "user", "system", "wall µs/text", "texts/s"], rows),
        [
            f"the no-op forward alone: {forward:.2f} µs/text (zeros of (256, {HIDDEN}))",
            f"the collated-batches run's CPU µs/text by thread (the model stage's: its worker-talking pool thread, "
            f"'cpu' the forward, 'collect', 'prepare', 'batch'; 'caller' the thread that called to_list; 'gc' the garbage collector): {by_thread}",
            f"best of {args.repeats} runs each, after a warm-up run; target (issue 22): ≤ 3 µs per text in the main process outside the forward",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
