"""Per-row overhead: 1,000,000 integers through five ``.map`` steps vs plain Python.

Compares, in one run: embedflow's ``ef.dc(range(N)).map(f)...map(f).to_list()`` against the
same five functions chained as plain generators, and as one list comprehension per step.
Medians of ``--repeats``, methods taking turns.

    python benchmarks/bench_overhead.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, report, table

import embedflow as ef


def inc(x: int) -> int:
    return x + 1


class NoModel(ef.Operator):
    """A batchable operator that does nothing: the scheduler's own ceiling per item."""

    batchable = True
    threaded = False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.rows

    dc = ef.dc(range(n)).map(inc).map(inc).map(inc).map(inc).map(inc).set_progress(False)

    def generators():
        g = (inc(x) for x in range(n))
        for _ in range(4):
            g = (inc(x) for x in g)
        return list(g)

    def comprehensions():
        rows = list(range(n))
        for _ in range(5):
            rows = [inc(x) for x in rows]
        return rows

    batched = ef.dc(range(n)).map(NoModel(), batch_size=256).set_progress(False)
    res = interleaved(
        {"embedflow": dc.to_list, "generators": generators, "comprehensions": comprehensions, "batched": batched.to_list},
        args.repeats,
    )
    assert res["embedflow"][1] == res["generators"][1] == res["comprehensions"][1]
    t_ef = res["embedflow"][0]
    rows = [
        ["embedflow: ef.dc(range(N)).map(inc) ×5 .to_list()", f"{t_ef:.2f}", f"{n / t_ef / 1e6:.2f}", "1.00"],
        [
            "plain generator chain (the target's reference)",
            f"{res['generators'][0]:.2f}",
            f"{n / res['generators'][0] / 1e6:.2f}",
            f"{t_ef / res['generators'][0]:.2f}",
        ],
        [
            "list comprehension per step",
            f"{res['comprehensions'][0]:.2f}",
            f"{n / res['comprehensions'][0] / 1e6:.2f}",
            f"{t_ef / res['comprehensions'][0]:.2f}",
        ],
        ["(ceiling of a model stage: a no-op batchable operator, batch 256)", f"{res['batched'][0]:.2f}", f"{n / res['batched'][0] / 1e6:.2f}", ""],
    ]
    report(
        f"Overhead: {n:,} integers through five .map steps",
        table(["method", "seconds", "M rows/s", "embedflow time ×"], rows),
        [
            f"median of {args.repeats} runs, methods taking turns",
            "target (issue 22): embedflow ≤ 1.3× the plain generator chain",
            "the last row is the most items/s a model operator's stage can pass (preprocess, batch, forward, reorder), a bound for fast GPU models",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
