"""Trust: no row lost, duplicated or stale whatever happens to a run, and no code run from a
file. Each test is one repro of the hostile audit (issue 11), run as the attacker ran it."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import embedflow as ef
from embedflow.errors import EmbedflowError, ParameterError, PipelineError
from embedflow.io.files import NpySink
from embedflow.io.sinks import SinkContext
from embedflow.pipelines import read_pipeline, run_pipeline

from .conftest import requires
from .helpers import embedflow, kill_at, slow_pipeline, wait_for_segments


def lines_of(path):
    return pq.read_table(path).column("text").to_pylist()


# --------------------------------------------------------------------------- 1. two runs, one output
@pytest.mark.slow
def test_a_second_run_of_the_same_output_refuses_at_once_and_the_first_is_intact(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path, rows=300)
    out = tmp_path / "out" / "v.parquet"
    args = ["run", str(pipeline), "--param", "delay=0.01"]
    first = embedflow(args, plugin, {"EMBEDFLOW_SHARD_ROWS": "40"})
    wait_for_segments(out.parent / ".v.parquet.cache", 1, first)
    second = embedflow(args, plugin)
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == 1
    assert f"another run (pid {first.pid}) is writing this output" in stderr and "Traceback" not in stderr
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert "read 300 rows, wrote 300" in stdout
    assert lines_of(out) == [f"line {i}" for i in range(300)]


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_free(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path, rows=200)
    out = tmp_path / "out" / "v.parquet"
    args = ["run", str(pipeline), "--param", "delay=0.01"]
    first = embedflow(args, plugin, {"EMBEDFLOW_SHARD_ROWS": "40"})
    wait_for_segments(out.parent / ".v.parquet.cache", 1, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    again = embedflow(args, plugin)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert ", reused " in stdout
    assert lines_of(out) == [f"line {i}" for i in range(200)]


# --------------------------------------------------------------------------- 2. helpers (a changed input: tests/test_incremental.py)
@pytest.fixture
def lengths(registered):
    @registered("trust.vec")
    def vec(text: str) -> np.ndarray:
        return np.array([len(text)], np.float32)

    return vec


def text_pipeline(tmp_path, lines, extra=""):
    data = tmp_path / "in.txt"
    data.write_text("".join(f"{line}\n" for line in lines))
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(f"""
        params: {{input: {data}, output: {tmp_path}/out/v.parquet}}
        source: {{read_text: "${{input}}", column: text{extra}}}
        steps: [{{op: trust.vec, in: text, out: vec}}]
        sink: {{parquet: "${{output}}"}}
        on_error: skip
    """)
    )
    return path, data


# --------------------------------------------------------------------------- 3. duplicate keys
def test_duplicate_keys_fail_before_any_work_naming_the_key_and_both_rows(tmp_path, plugin, monkeypatch):
    rows = [{"id": f"k{i % 7}" if i in (3, 10) else f"id{i}", "text": f"line {i}"} for i in range(20)]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "p.yaml"
    log = tmp_path / "log.txt"
    path.write_text(
        textwrap.dedent(f"""
        source: {{read_jsonl: {data}, key: id}}
        steps: [{{op: slow.mark, in: text, out: vec, with: {{log: {log}}}}}]
        sink: {{parquet: {tmp_path}/v.parquet}}
    """)
    )
    proc = embedflow(["run", str(path)], plugin)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "rows 3 and 10 have the same key id='k3'" in stderr
    assert not log.exists()  # nothing was computed


def test_to_milvus_refuses_duplicate_keys(tmp_path):
    requires("pymilvus", "milvus")
    dc = ef.dc["id", "vec"]([("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("a", [1.0, 1.0])])
    with pytest.raises(EmbedflowError, match="rows 0 and 2 have the same key id='a'"):
        dc.to_milvus(str(tmp_path / "v.db"), "c", key="id")


# --------------------------------------------------------------------------- 4. strict types
@pytest.mark.parametrize(
    ("op", "params", "message"),
    [
        (
            "text_embedding.transformers",
            {"model_name": "m", "trust_remote_code": "false"},
            "trust_remote_code='false' must be true or false, not a str",
        ),
        ("image_embedding.timm", {"model_name": "resnet18", "pretrained": "no"}, "pretrained='no' must be true or false, not a str"),
        ("normalize", {"p": "2"}, "p='2' must be a number, not a str"),
    ],
)
def test_quoted_values_are_not_coerced(tmp_path, op, params, message):
    path = tmp_path / "p.yaml"
    path.write_text(f"source: {{read_text: x, column: text}}\nsteps:\n  - op: {op}\n    in: text\n    with: {json.dumps(params)}\n")
    with pytest.raises(PipelineError, match=message) as err:
        read_pipeline(path)
    assert str(err.value).startswith(f"{path}:5:")  # the line of the parameter
    ref = ef.dc["text"](["x"])
    for part in op.split("."):
        ref = getattr(ref, part)
    with pytest.raises(ParameterError, match=message):  # the same check in Python
        ref["text"](**params)


# --------------------------------------------------------------------------- 5. no code from a file
@pytest.mark.parametrize("spec", ["os:abort", "tempfile:mkdtemp", "sys:exit"])
def test_a_pipeline_file_cannot_call_an_importable_function(tmp_path, spec):
    path = tmp_path / "p.yaml"
    path.write_text(f"source: {{items: [[1.0, 2.0]], column: x}}\nsteps:\n  - {{op: embedding.torch, in: x, out: vec, with: {{model: '{spec}'}}}}\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for command in ("validate", "explain", "run"):
        proc = embedflow([command, str(path)], env={"TMPDIR": str(scratch)})
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2, (command, stderr)  # not 134 (abort) nor 0 (exit)
        assert f"model='{spec}' would import and run code from module" in stderr and "--allow-import" in stderr
    assert list(scratch.iterdir()) == []  # mkdtemp never ran


def test_an_allowed_factory_module_runs(tmp_path, plugin):
    path = tmp_path / "p.yaml"
    path.write_text(
        f"source: {{items: [[1.0, 2.0]], column: x}}\nsteps:\n  - {{op: embedding.torch, in: x, out: vec, with: {{model: 'slowops:small_mlp', layer: -2}}}}\nsink: {{jsonl: {tmp_path}/v.jsonl}}\n"
    )
    refused = embedflow(["run", str(path), "--quiet"], plugin)
    assert refused.wait(timeout=60) == 2
    proc = embedflow(["run", str(path), "--quiet", "--allow-import", "slowops"], plugin)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert len(json.loads((tmp_path / "v.jsonl").read_text())["vec"]) == 4  # the ReLU's output


# --------------------------------------------------------------------------- 6. kills at every step of the end
@pytest.mark.slow
@pytest.mark.parametrize("point", ["segment-written:3", "segment-listed:3", "merge-half", "output-written"])
def test_a_kill_at_any_instant_of_commit_or_merge_resumes_to_every_row_once(tmp_path, plugin, point):
    pipeline = slow_pipeline(tmp_path, rows=300)
    out = tmp_path / "out" / "v.parquet"
    killed = embedflow(["run", str(pipeline)], plugin, {**kill_at(point, out), "EMBEDFLOW_SHARD_ROWS": "50"})
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    segments = out.parent / ".v.parquet.cache" / "segments"
    arrows, listed = len(list(segments.glob("*.arrow"))), len(list(segments.glob("*.json")))
    committed = sum(json.loads(p.read_text())["rows"] for p in segments.glob("*.json"))
    if point == "segment-written:3":  # the third segment landed, its sidecar did not: it does not count
        assert (arrows, listed) == (3, 2) and not out.exists()
    elif point == "segment-listed:3":  # the third segment counts; no output yet
        assert (arrows, listed) == (3, 3) and not out.exists()
    elif point == "merge-half":  # every row in the store, the output half written and not in place
        assert arrows == listed and not out.exists()
    else:  # the output in place, the store's record of what it used not yet written
        assert out.exists() and not list((segments.parent / "refs").iterdir())
    again = embedflow(["run", str(pipeline)], plugin)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert f"read 300 rows, reused {committed}, wrote 300, failed 0" in stdout  # what counted, and only that
    assert point.startswith("segment") or committed == 300
    assert lines_of(out) == [f"line {i}" for i in range(300)]  # every row once, in order
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_temporaries_of_dead_processes_are_removed(tmp_path, lengths):
    path, _data = text_pipeline(tmp_path, ["a", "b"])
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".v.parquet.999999999-deadbeef.tmp"  # no such pid
    stale.write_text("half a file")
    run_pipeline(read_pipeline(path), progress=False)
    assert not stale.exists()


# --------------------------------------------------------------------------- 7. bad lines
BAD_UTF8 = b"ok\nbad \xff\nok too\n"


def test_invalid_utf8_under_raise_names_file_and_line(tmp_path, lengths):
    path, data = text_pipeline(tmp_path, [])
    data.write_bytes(BAD_UTF8)
    path.write_text(path.read_text().replace("on_error: skip", "on_error: raise"))
    with pytest.raises(EmbedflowError, match=rf"{data}:2: not valid UTF-8 \(byte 0xff at column 5\)"):
        run_pipeline(read_pipeline(path), progress=False)
    assert not (tmp_path / "out" / "v.parquet").exists()


def test_invalid_utf8_and_bad_json_under_skip_are_recorded_and_the_rest_is_written(tmp_path, lengths):
    path, data = text_pipeline(tmp_path, [])
    data.write_bytes(BAD_UTF8)
    summary = run_pipeline(read_pipeline(path), progress=False)
    assert (summary.read, summary.written, summary.failed) == (3, 2, 1)
    assert lines_of(tmp_path / "out" / "v.parquet") == ["ok", "ok too"]
    (record,) = [json.loads(line) for line in Path(summary.errors).read_text().splitlines()]
    assert (record["row"], record["key"], record["step"]) == (1, "1", "read_text") and ":2: not valid UTF-8" in record["message"]

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "a"}\n{"text": oops}\n\n{"text": "c"}\n')
    path.write_text(path.read_text().replace('read_text: "${input}", column: text', f"read_jsonl: {jsonl}"))
    summary = run_pipeline(read_pipeline(path, output=str(tmp_path / "j.parquet")), progress=False)
    assert (summary.written, summary.failed) == (2, 1)
    assert lines_of(tmp_path / "j.parquet") == ["a", "c"]
    assert ":2: not valid JSON" in Path(summary.errors).read_text()


# --------------------------------------------------------------------------- 9. npy with no rows
def test_npy_sink_with_no_rows_writes_an_empty_array_and_no_stray_file(tmp_path):
    sink = NpySink(tmp_path / "v.npy", "vec")
    sink.open(SinkContext(named=True))
    sink.close()
    assert np.load(tmp_path / "v.npy").shape == (0,)
    assert (tmp_path / "v.npy.keys.jsonl").read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy", "v.npy.keys.jsonl"]


def test_a_run_whose_rows_all_fail_writes_an_empty_npy(tmp_path, plugin, monkeypatch):
    pipeline = slow_pipeline(tmp_path, rows=3, on_error="skip", sink="npy")
    (tmp_path / "lines.txt").write_text("poison\npoison\n")
    proc = embedflow(["run", str(pipeline), "--quiet"], plugin)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "read 2 rows, wrote 0, failed 2" in stdout
    assert np.load(tmp_path / "out" / "v.npy").shape == (0,)


# --------------------------------------------------------------------------- 10. rows commit as they finish
@pytest.mark.slow
def test_rows_commit_as_they_finish_not_after_the_sort_window(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path, rows=1000, op="slow.embed")  # a 2,048-row sort window
    out = tmp_path / "out" / "v.parquet"
    log = tmp_path / "log.txt"
    proc = embedflow(["run", str(pipeline), "--param", "delay=0.004"], plugin, {"EMBEDFLOW_SHARD_ROWS": "100"})
    wait_for_segments(out.parent / ".v.parquet.cache", 1, proc)
    computed = len(log.read_text().splitlines())
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert computed < 500  # the first shard came long before the window was done
    assert lines_of(out) == [f"line {i}" for i in range(1000)]
