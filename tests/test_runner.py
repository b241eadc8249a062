"""`embedflow run`: sinks, bad rows, atomic outputs, resume after kill -9 and Ctrl-C, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedflow.pipelines import read_pipeline, run_pipeline

from .conftest import ROOT, write_fake_distribution

SLOW_OPS = '''
import time
import numpy as np

def mark(text, log, delay=0.0):
    """Append the text to a log file (to see what was computed), wait, return a vector."""
    with open(log, "a") as f:
        f.write(text + "\\n")
    time.sleep(delay)
    if text == "poison":
        raise ValueError("poisoned row")
    return np.array([len(text), text.count("1")], np.float32)
'''


@pytest.fixture
def plugin(tmp_path):
    """A plugin package (``slow.mark``) visible to subprocesses through PYTHONPATH only."""
    site = tmp_path / "site"
    (site / "slowops").mkdir(parents=True)
    (site / "slowops" / "__init__.py").write_text(SLOW_OPS)
    write_fake_distribution(site, "slowops", "slow.mark = slowops:mark\n")
    return site


# A shell that starts jobs in the background (as CI may) leaves SIGINT ignored in them, and Python
# then never raises KeyboardInterrupt. The launcher restores the default disposition and execs the
# CLI. It is not a ``preexec_fn``: that forces a plain fork() of the pytest process, and after the
# Ray tests gRPC's fork handlers can abort the child (SIGABRT, "epoll_wait error: Bad file descriptor").
DEFAULT_SIGINT_LAUNCHER = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'embedflow', *sys.argv[1:]])"
)


def embedflow(args, plugin=None, env=None, default_sigint=False, **kwargs):
    full_env = {**os.environ, "EMBEDFLOW_PROGRESS": "0", **(env or {})}
    if plugin is not None:
        full_env["PYTHONPATH"] = str(plugin) + os.pathsep + full_env.get("PYTHONPATH", "")
    command = [sys.executable, "-c", DEFAULT_SIGINT_LAUNCHER] if default_sigint else [sys.executable, "-m", "embedflow"]
    return subprocess.Popen(
        [*command, *args], env=full_env, cwd=kwargs.pop("cwd", ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def slow_pipeline(tmp_path, rows=400, on_error="raise", sink="parquet"):
    data = tmp_path / "lines.txt"
    data.write_text("".join(f"line {i}\n" for i in range(rows)))
    path = tmp_path / "slow.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: slow
        params: {{input: {data}, output: {tmp_path}/out/v.{sink}, log: {tmp_path}/log.txt, delay: 0.0}}
        source: {{read_text: "${{input}}", column: text}}
        steps:
          - {{op: slow.mark, in: text, out: vec, with: {{log: "${{log}}", delay: "${{delay}}"}}}}
        sink: {{{sink}: "${{output}}", {"column: vec" if sink == "npy" else "columns: [text, vec]"}}}
        on_error: {on_error}
    """)
    )
    return path


def wait_for_shards(parts: Path, count: int, proc, timeout: float = 60) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        manifest = parts / "manifest.json"
        if manifest.exists():
            try:
                shards = json.loads(manifest.read_text())["shards"]
            except json.JSONDecodeError:
                shards = []
            if len(shards) >= count:
                return [s["file"] for s in shards]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no shards appeared")


@pytest.mark.slow
def test_resume_after_kill_9_gives_every_row_once_in_order_without_recomputing(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path)
    out = tmp_path / "out" / "v.parquet"
    parts = out.parent / ".v.parquet.parts"
    env = {"EMBEDFLOW_SHARD_ROWS": "40"}
    args = ["run", str(pipeline), "--param", "delay=0.01"]

    first = embedflow(args, plugin, env)
    wait_for_shards(parts, 2, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not out.exists()  # no half-written output
    shards = json.loads((parts / "manifest.json").read_text())["shards"]
    committed = {text for shard in shards for text in pq.read_table(parts / shard["file"]).column("text").to_pylist()}
    (tmp_path / "log.txt").write_text("")  # from here on, the log shows what the re-run computes

    second = embedflow(args, plugin, env)
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    assert "already done by an earlier run" in stdout
    recomputed = set((tmp_path / "log.txt").read_text().splitlines())
    assert not (recomputed & committed)  # rows written before the kill were not computed again
    assert not parts.exists()

    reference = tmp_path / "ref.parquet"
    clean = embedflow(["run", str(pipeline), "--param", f"output={reference}", "--param", f"log={tmp_path}/log2.txt"], plugin)
    assert clean.wait(timeout=120) == 0
    resumed, uninterrupted = pq.read_table(out), pq.read_table(reference)
    assert resumed.column("text").to_pylist() == [f"line {i}" for i in range(400)]
    assert resumed.equals(uninterrupted)


@pytest.mark.slow
def test_ctrl_c_saves_finished_rows_and_exits_130(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path, rows=1000)
    out = tmp_path / "out" / "v.parquet"
    log = tmp_path / "log.txt"
    args = ["run", str(pipeline), "--param", "delay=0.01"]
    proc = embedflow(args, plugin, {"EMBEDFLOW_SHARD_ROWS": "100000", "EMBEDFLOW_SHARD_SECONDS": "1000"}, default_sigint=True)
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 100):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)  # 100 rows computed, none committed yet (by size or by time)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run the same command to resume" in stderr
    shards = json.loads((out.parent / ".v.parquet.parts" / "manifest.json").read_text())["shards"]
    assert shards and shards[0]["rows"] > 0  # the interrupt committed the rows that had reached the sink
    again = embedflow(args, plugin)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert f"({shards[0]['rows']} already done by an earlier run)" in stdout
    assert pq.read_table(out).column("text").to_pylist() == [f"line {i}" for i in range(1000)]


def test_skip_mode_keeps_good_images_and_records_bad_ones(tmp_path, sample_images):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sample_images[:3]:
        shutil.copy(p, folder / p.name)
    data = sample_images[0].read_bytes()
    (folder / "b_truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "c_notes.jpg").write_text("not an image")
    out = tmp_path / "v.parquet"
    pipeline = read_pipeline(ROOT / "pipelines" / "image_embedding.yaml", images=str(folder / "*.jpg"), output=str(out))
    summary = run_pipeline(pipeline, progress=False)
    table = pq.read_table(out)
    assert [Path(p).name for p in table.column("path").to_pylist()] == sorted(p.name for p in sample_images[:3])
    assert table.schema.field("vec").type == pa.list_(pa.float32(), 1280)
    assert (summary.read, summary.written, summary.failed) == (5, 3, 2)
    errors = [json.loads(line) for line in Path(summary.errors).read_text().splitlines()]
    assert [Path(e["key"]).name for e in errors] == ["b_truncated.jpg", "c_notes.jpg"]
    assert {e["step"] for e in errors} == {"image_decode"} and errors[0]["error_type"] == "ImageDecodeError"


def test_jsonl_and_npy_sinks(tmp_path, plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin))
    from embedflow import registry

    registry.reload_entry_points()
    try:
        for sink in ("jsonl", "npy"):
            pipeline = read_pipeline(slow_pipeline(tmp_path, rows=30, sink=sink))
            summary = run_pipeline(pipeline, progress=False)
            assert summary.written == 30
        rows = [json.loads(line) for line in (tmp_path / "out" / "v.jsonl").read_text().splitlines()]
        assert rows[2] == {"text": "line 2", "vec": [6.0, 0.0]}
        array = np.load(tmp_path / "out" / "v.npy")
        assert array.shape == (30, 2) and array.dtype == np.float32
        keys = [json.loads(line) for line in (tmp_path / "out" / "v.npy.keys.jsonl").read_text().splitlines()]
        assert keys[5] == {"row": 5, "key": "5"}
    finally:
        monkeypatch.undo()
        registry.reload_entry_points()


def test_exit_codes_and_a_failed_run_leaves_no_output(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path, rows=20)
    data = tmp_path / "lines.txt"
    data.write_text("ok\npoison\nfine\n")
    out = tmp_path / "out" / "v.parquet"
    failed = embedflow(["run", str(pipeline)], plugin)
    _, stderr = failed.communicate(timeout=60)
    assert failed.returncode == 1 and "slow.mark failed on row 1" in stderr and "poisoned row" in stderr
    assert not out.exists()

    assert embedflow(["validate", str(tmp_path / "missing.yaml")]).wait(timeout=60) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {read_text: x}\nstepz: []\n")
    proc = embedflow(["validate", str(bad)])
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"{bad}:2: pipeline: unknown key 'stepz'" in stderr
    assert embedflow(["run", str(pipeline), "--param", "novalue"], plugin).wait(timeout=60) == 2
    assert embedflow(["run"]).wait(timeout=60) == 2

    skip = slow_pipeline(tmp_path, rows=20, on_error="skip")
    data.write_text("ok\npoison\nfine\n")
    proc = embedflow(["run", str(skip), "--no-resume", "--quiet"], plugin)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "read 3 rows, wrote 2, failed 1" in stdout and "v.parquet.errors.jsonl" in stdout


def test_limit_and_explain_and_ops_commands(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path, rows=50)
    proc = embedflow(["run", str(pipeline), "--limit", "7", "--quiet"], plugin)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "read 7 rows, wrote 7" in stdout
    proc = embedflow(["explain", str(pipeline)], plugin)
    stdout, _ = proc.communicate(timeout=60)
    assert "slow.mark(log=" in stdout and "sink    parquet" in stdout
    proc = embedflow(["ops"])
    stdout, _ = proc.communicate(timeout=60)
    assert "text_embedding.transformers" in stdout and "[package embedflow" in stdout
    proc = embedflow(["ops", "normalize"])
    stdout, _ = proc.communicate(timeout=60)
    assert "parameters: p=2, axis=-1" in stdout
