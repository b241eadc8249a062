"""Batch shapes on a GPU, measured on the CPU: how many (rows, width) signatures the text chain
cuts — each one a CUDA graph to record, each recording a device-wide synchronize — and how many
padded tokens it computes per real one. The real MiniLM tokenizer over the GPU check's corpus
(50,000 sentences, benchmarks/gpu_check.py), cut by the engine's own routine as on a GPU
(``for_device(stage, "cuda:0")``, the operator prepared for CUDA) against the cut before issue
22 (windows of 1,024, widths padded to multiples of 8, the token budget by real widths).

    python benchmarks/bench_shapes.py [--sentences 50000]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, table
from gpu_check import MINILM, corpus

import embedflow as ef
from embedflow.engines.batching import ModelBatcher, cut_window, for_device
from embedflow.engines.failures import FailureLog
from embedflow.engines.replicas import place
from embedflow.plan import instantiate, lower


def shapes(batches: list[tuple[int, int, int]]) -> list[str]:
    """One table row from (rows, width, real tokens) per batch."""
    signatures = Counter((rows, width) for rows, width, _ in batches)
    padded, real = sum(r * w for r, w, _ in batches), sum(t for _, _, t in batches)
    once = sum(1 for n in signatures.values() if n == 1)
    return [str(len(batches)), str(len(signatures)), str(once), f"{padded / real:.3f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sentences", type=int, default=50_000)
    args = parser.parse_args()
    texts = corpus(args.sentences)
    chain = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch")
    stage = for_device(lower(chain.plan).model_stages[0], "cuda:0")
    op = instantiate(stage.step)
    place(op, "cuda:0")  # the engine's choices on a GPU: bucketed widths
    op.setup_preprocess("cuda:0")  # the tokenizer only; no weights, no device needed
    batcher = ModelBatcher(stage, op, FailureLog())
    prepared = batcher.prepare(range(len(texts)), texts)
    sizes = [p[3] for p in prepared]

    before = []
    for start in range(0, len(sizes), 1024):  # before: windows of 1,024, multiples of 8, budget by real widths
        for group in cut_window(sizes[start : start + 1024], stage.batch_size, key=lambda n: n, max_tokens=stage.max_batch_tokens):
            before.append((len(group), -(-max(group) // 8) * 8, sum(group)))
    after, order = [], []
    for start in range(0, len(prepared), batcher.window):  # the engine's cut, collated by the operator
        for group in batcher.cut(prepared[start : start + batcher.window]):
            ids = batcher.collate(group)["input_ids"]
            after.append((ids.shape[0], ids.shape[1], sum(p[3] for p in group)))
            order.extend(p[0] for p in group)
    assert sorted(order) == list(range(len(texts)))  # every row in exactly one batch
    rows = [
        ["before: windows of 1,024, widths × 8"] + shapes(before),
        [f"now: windows of {batcher.window:,}, bucketed widths"] + shapes(after),
    ]
    report(
        f"Text batch shapes on a GPU (MiniLM tokenizer, {len(texts):,} sentences, batch {stage.batch_size}, {stage.max_batch_tokens:,} tokens)",
        table(["cut", "batches", "signatures", "used once", "padded / real tokens"], rows),
        [
            "signatures: distinct (rows, width) pairs, one CUDA graph each (MAX_GRAPHS per replica)",
            "targets (issue 22): ≤ 16 signatures, ≤ 1.25 padded/real",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
