"""Text collate: the operator's numpy collate vs the list-of-lists one it replaced, items/s
at batch 32 and 1,024 (1,024 random token lists of 8–64 tokens; the outputs are checked equal).

    python benchmarks/bench_collate.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, table

from embedflow_operators.text_embedding._tokens import Tokens


def lists_collate(items, pad_id=0):
    """The collate before: Python lists padded, then one torch.tensor per key."""
    width = max(len(it["input_ids"]) for it in items)
    return {k: torch.tensor([it[k] + [pad_id if k == "input_ids" else 0] * (width - len(it[k])) for it in items], dtype=torch.long) for k in items[0]}


def rate(fn, items, seconds=2.0):
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn(items)
        calls += 1
    return calls * len(items) / (time.perf_counter() - start)


def main() -> int:
    rng = random.Random(0)
    items = []
    for _ in range(1024):
        ids = [rng.randint(0, 30000) for _ in range(rng.randint(8, 64))]
        items.append({"input_ids": ids, "token_type_ids": [0] * len(ids)})
    tokens = Tokens(None, 512, ["input_ids", "attention_mask", "token_type_ids"], pad_id=0)  # the operator's collate
    with_masks = [{**it, "attention_mask": [1] * len(it["input_ids"])} for it in items]
    rows = []
    for size in (32, 1024):
        batch, masked = items[:size], with_masks[:size]
        assert all(torch.equal(tokens.collate(batch)[k], lists_collate(masked)[k]) for k in masked[0])
        old, new = rate(lists_collate, masked), rate(tokens.collate, batch)
        rows.append([str(size), f"{old:,.0f}", f"{new:,.0f}", f"{new / old:.2f}"])
    report("Text collate: numpy vs Python lists", table(["batch", "lists items/s", "numpy items/s", "×"], rows), ["2 s per measurement"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
