"""`embedflow run`: sinks, bad rows, atomic outputs, resume after kill -9 and Ctrl-C, exit codes."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedflow.errors import ModelNotFoundError
from embedflow.pipelines import read_pipeline, run_pipeline

from .conftest import ROOT, requires
from .helpers import embedflow, slow_pipeline, wait_for_segments


def stored_texts(store):
    """The texts the listed segments of a result store hold."""
    import pyarrow as pa

    texts = set()
    for sidecar in (store / "segments").glob("*.json"):
        with pa.memory_map(str(sidecar.with_suffix(".arrow"))) as source:
            texts.update(pa.ipc.open_file(source).read_all().column("text").to_pylist())
    return texts


@pytest.mark.slow
def test_resume_after_kill_9_gives_every_row_once_in_order_without_recomputing(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path)
    out = tmp_path / "out" / "v.parquet"
    store = out.parent / ".v.parquet.cache"
    env = {"EMBEDFLOW_SHARD_ROWS": "40"}
    args = ["run", str(pipeline), "--param", "delay=0.01"]

    first = embedflow(args, plugin, env)
    wait_for_segments(store, 2, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not out.exists()  # no half-written output
    committed = stored_texts(store)
    (tmp_path / "log.txt").write_text("")  # from here on, the log shows what the re-run computes

    second = embedflow(args, plugin, env)
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    assert f"read 400 rows, reused {len(committed)}, wrote 400" in stdout
    recomputed = set((tmp_path / "log.txt").read_text().splitlines())
    assert not (recomputed & committed)  # rows written before the kill were not computed again

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
    committed = stored_texts(out.parent / ".v.parquet.cache")
    assert committed  # the interrupt committed the rows that had reached the sink
    again = embedflow(args, plugin)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert f"read 1000 rows, reused {len(committed)}, wrote 1000" in stdout
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


@pytest.mark.parametrize("sink", ["parquet", "milvus"])
def test_a_run_whose_model_will_not_load_leaves_nothing_behind(tmp_path, sink):
    if sink == "milvus":
        requires("pymilvus", "milvus")
    (tmp_path / "lines.txt").write_text("a\nb\n")
    out = tmp_path / "new" / "out" / ("v.parquet" if sink == "parquet" else "v.db")
    spec = f"{{parquet: {out}}}" if sink == "parquet" else f"{{milvus: {out}, collection: c, fields: [text]}}"
    (tmp_path / "p.yaml").write_text(
        f"source: {{read_text: {tmp_path / 'lines.txt'}, column: text}}\n"
        "steps:\n  - {op: text_embedding.transformers, in: text, out: vec, with: {model_name: no-such/model}}\n"
        f"sink: {spec}\n"
    )
    with pytest.raises(ModelNotFoundError, match="cannot load model 'no-such/model' offline"):
        run_pipeline(read_pipeline(tmp_path / "p.yaml"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.txt", "p.yaml"]  # no folder, lock or shards


def test_a_store_of_another_version_is_set_aside_with_one_line(tmp_path):
    (tmp_path / "lines.txt").write_text("a\nb\n")
    out = tmp_path / "out" / "v.parquet"
    (tmp_path / "p.yaml").write_text(
        f"source: {{read_text: {tmp_path / 'lines.txt'}, column: text}}\nsteps:\n  - {{op: normalize, in: text, out: text}}\nsink: {{jsonl: {out}}}\n"
    )
    (tmp_path / "p.yaml").write_text(
        f"source: {{read_text: {tmp_path / 'lines.txt'}, column: text}}\nsteps:\n  - {{select: [text]}}\nsink: {{jsonl: {out}}}\n"
    )
    store = out.parent / ".v.parquet.cache"
    store.mkdir(parents=True)
    (store / "store.json").write_text('{"format": 0}')
    with pytest.warns(UserWarning, match=r"written by another version of embedflow \(format 0\): set aside as .*results are computed anew") as caught:
        summary = run_pipeline(read_pipeline(tmp_path / "p.yaml"), progress=False)
    assert len(caught) == 1 and (summary.read, summary.reused, summary.written) == (2, 0, 2)
    assert json.loads((store / "store.json").read_text()) == {"format": 1}
    assert len([p for p in out.parent.iterdir() if ".format-0-" in p.name]) == 1  # kept for the user


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


def test_the_device_option_reaches_the_model_steps(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path, rows=5, op="slow.embed")
    proc = embedflow(["run", str(pipeline), "--device", "cuda:7", "--quiet"], plugin)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "device='cuda:7' but" in stderr  # no GPU here, or fewer than 8
    proc = embedflow(["run", str(pipeline), "--device", "cpu", "--quiet"], plugin)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "wrote 5" in stdout, stderr
