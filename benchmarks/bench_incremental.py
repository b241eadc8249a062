"""Incremental runs: the bundled text pipeline (MiniLM) over N sentences, then again after 1% of
them were edited — the rerun's time as a fraction of the first run's, beyond the model's load —
and the result store's size per row.

Every run is ``embedflow run pipelines/text_embedding.yaml`` in a fresh process, as a user runs
it. The model's load is measured by a run over one sentence (the ONNX export, if any, happens
before any timing). Then: the first run (nothing in the store), a rerun with nothing changed,
and a rerun after editing every 100th sentence; the output of the last must equal a fresh run's
(``--recompute`` into another output).

    python benchmarks/bench_incremental.py [--sentences 20000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, table

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "text_embedding.yaml"


def corpus(n: int) -> list[str]:
    lines = [line for line in (ROOT / "embedflow" / "samples" / "texts" / "python_docs.txt").read_text().splitlines() if line.strip()]
    return [f"{lines[i % len(lines)]} (#{i})" for i in range(n)]


def run(data: Path, output: Path, *extra: str) -> tuple[float, str]:
    """One ``embedflow run``: its wall time and closing line."""
    args = [sys.executable, "-m", "embedflow", "run", str(PIPELINE), "--quiet", "--param", f"input={data}", "--param", f"output={output}", *extra]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "EMBEDFLOW_PROGRESS": "0"}, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return seconds, proc.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=20_000)
    parser.add_argument("--edit-every", type=int, default=100, help="edit every N-th sentence (100: 1%%)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    texts = corpus(args.sentences)
    data, out = work / "in.txt", work / "out" / "v.parquet"

    (work / "one.txt").write_text(texts[0] + "\n")
    run(work / "one.txt", work / "warm" / "v.parquet")  # the ONNX export, once, before any timing
    load, _ = run(work / "one.txt", work / "load" / "v.parquet")
    data.write_text("".join(t + "\n" for t in texts))
    first, first_line = run(data, out)
    same, same_line = run(data, out)
    edited = [f"{t} — edited" if i % args.edit_every == 0 else t for i, t in enumerate(texts)]
    data.write_text("".join(t + "\n" for t in edited))
    rerun, rerun_line = run(data, out)
    fresh = work / "fresh" / "v.parquet"
    run(data, fresh, "--recompute")

    got, want = pq.read_table(out), pq.read_table(fresh)
    assert got.column("text").to_pylist() == want.column("text").to_pylist() == edited
    vecs = lambda t: np.stack(t.column("vec").to_numpy(zero_copy_only=False))  # noqa: E731
    max_diff = float(np.abs(vecs(got) - vecs(want)).max())
    reused = int(re.search(r"reused (\d+)", rerun_line).group(1))  # type: ignore[union-attr]
    store = out.parent / ".v.parquet.cache"
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    entries = args.sentences + (args.sentences + args.edit_every - 1) // args.edit_every  # the edited rows are new entries

    rows = [
        ["model load (a run over 1 sentence)", f"{load:.1f}", ""],
        [f"first run ({args.sentences:,} sentences)", f"{first:.1f}", first_line.split(" in ")[0]],
        ["rerun, nothing changed", f"{same:.1f}", same_line.split(" in ")[0]],
        [f"rerun, every {args.edit_every}th sentence edited", f"{rerun:.1f}", rerun_line.split(" in ")[0]],
    ]
    beyond = (rerun - load) / (first - load)
    report(
        f"Incremental runs: MiniLM, {args.sentences:,} sentences, 1 in {args.edit_every} edited",
        table(["run", "seconds", "closing line"], rows),
        [
            f"rerun / first run: {rerun / first:.3f}; beyond the model's load: (rerun - load) / (first - load) = {beyond:.3f} (target ≤ 0.10)",
            f"rows reused {reused:,}; output equal to a fresh run's: same rows and order, max |Δvec| {max_diff:.2e}",
            f"result store: {size / 1e6:.1f} MB for {entries:,} entries, {size / entries:,.0f} bytes per row (a 384-float vector is 1,536)",
            "each run is `embedflow run pipelines/text_embedding.yaml` in a fresh process; the ONNX export happened before any timing",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
