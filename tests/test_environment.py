"""Environmental failures and odd inputs: one clear line and the right exit code, found before
any work where that is possible; the traceback only on request."""

from __future__ import annotations

import json
import os
import textwrap

import pyarrow.parquet as pq
import pytest

import embedflow as ef
from embedflow.cli import main
from embedflow.errors import EmbedflowError, PipelineError
from embedflow.pipelines import read_pipeline, run_pipeline

from .conftest import ROOT, requires


@pytest.fixture(autouse=True)
def length(registered):
    @registered("env.length")
    def length(text: str) -> list[float]:
        return [float(len(text))]


def text_file_pipeline(tmp_path, output, lines=("a", "b")):
    data = tmp_path / "in.txt"
    data.write_text("".join(f"{line}\n" for line in lines))
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(f"""
        params: {{input: {data}, output: {output}}}
        source: {{read_text: "${{input}}", column: text}}
        steps: [{{op: env.length, in: text, out: vec}}]
        sink: {{jsonl: "${{output}}"}}
    """)
    )
    return path


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err):
    lines = [line for line in err.strip().splitlines() if not line.startswith("embedflow: running ")]
    assert "Traceback" not in err and len(lines) == 1, err


def test_read_only_output_folder_is_found_before_any_work(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root may write anywhere: let the folder refuse root too
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(folder) and mode & os.W_OK else real_access(p, mode))
    path = text_file_pipeline(tmp_path, folder / "v.jsonl")
    for command in ("validate", "run"):
        code, _out, err = cli(capsys, command, str(path))
        assert code == 1 and "is not writable" in err
        assert_one_line(err)
    (tmp_path / "file").write_text("x")
    code, _out, err = cli(capsys, "validate", str(text_file_pipeline(tmp_path, tmp_path / "file" / "sub" / "v.jsonl")))
    assert code == 1 and "is a file, not a folder" in err


def test_an_output_that_is_a_folder_is_found_before_any_work(tmp_path, capsys):
    (tmp_path / "v.jsonl").mkdir()
    path = text_file_pipeline(tmp_path, tmp_path / "v.jsonl", lines=["x"])
    for command in ("validate", "run"):
        code, _out, err = cli(capsys, command, str(path))
        assert code == 1 and "is a folder; name a file in it" in err
        assert_one_line(err)


def test_a_missing_input_fails_validate_and_run_in_one_line(tmp_path, capsys):
    path = text_file_pipeline(tmp_path, tmp_path / "v.jsonl")
    (tmp_path / "in.txt").unlink()
    for command in ("validate", "run"):
        code, _out, err = cli(capsys, command, str(path))
        assert code == 1 and "in.txt' does not exist" in err
        assert_one_line(err)


def test_an_unknown_model_is_one_line_and_the_traceback_is_on_request(tmp_path, capsys, monkeypatch):
    data = tmp_path / "in.txt"
    data.write_text("hello\n")
    path = tmp_path / "p.yaml"
    path.write_text(
        f"source: {{read_text: {data}, column: text}}\nsteps: [{{op: text_embedding.transformers, in: text, out: v, with: {{model_name: no-such-org/no-model}}}}]\nsink: {{jsonl: {tmp_path}/v.jsonl}}\n"
    )
    code, _out, err = cli(capsys, "run", str(path), "--quiet")
    assert code == 1 and "cannot load model 'no-such-org/no-model'" in err and "Fix:" in err  # the whole story: no traceback hint needed
    assert_one_line(err)
    code, _out, err = cli(capsys, "run", str(path), "--quiet", "--traceback")
    assert code == 1 and "Traceback (most recent call last)" in err
    monkeypatch.setenv("EMBEDFLOW_DEBUG", "1")
    assert "Traceback" in cli(capsys, "run", str(path), "--quiet")[2]


def test_a_disk_error_while_writing_is_one_line(tmp_path, capsys, monkeypatch):
    from embedflow.io import files

    def full(self, numbers, rows):
        raise OSError(28, "No space left on device", str(self.file.tmp))

    monkeypatch.setattr(files.JsonlSink, "write", full)
    path = text_file_pipeline(tmp_path, tmp_path / "v.jsonl")
    code, _out, err = cli(capsys, "run", str(path), "--quiet")
    assert code == 1 and "No space left on device" in err
    assert_one_line(err)
    assert not (tmp_path / "v.jsonl").exists()


def test_an_unreachable_milvus_is_one_line(tmp_path, capsys):
    requires("pymilvus", "milvus")
    data = tmp_path / "in.txt"
    data.write_text("1\n")
    path = tmp_path / "p.yaml"
    path.write_text(
        f"source: {{read_text: {data}, column: text}}\nsteps: [{{op: env.length, in: text, out: vec}}]\nsink: {{milvus: 'http://127.0.0.1:9', collection: c}}\n"
    )
    code, _out, err = cli(capsys, "run", str(path), "--quiet")
    assert code == 1 and "milvus: cannot connect to 'http://127.0.0.1:9'" in err
    assert_one_line(err)


# --------------------------------------------------------------------------- odd inputs
def test_glob_through_a_symlink_loop_lists_each_file_once(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)  # sub/loop/sub/loop/... forever
    paths = ef.glob(str(tmp_path / "**" / "*.txt")).to_list()
    assert sorted(os.path.basename(p) for p in paths) == ["a.txt", "b.txt"]


def test_a_dangling_symlink_is_recorded_under_skip_and_fails_under_raise(tmp_path, sample_images):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(sample_images[0].read_bytes())
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    failed = []
    rows = ef.glob["path"](str(folder / "*.jpg")).safe(errors=failed).image_decode["path", "img"]().to_list()
    assert [os.path.basename(r["path"]) for r in rows] == ["a.jpg"]
    assert failed[0]["key"].endswith("gone.jpg") and "does not exist" in failed[0]["message"]
    with pytest.raises(ef.ItemError, match="gone.jpg"):
        ef.glob["path"](str(folder / "*.jpg")).image_decode["path", "img"]().to_list()


def test_an_empty_input_fails_clearly_unless_the_pipeline_allows_it(tmp_path, capsys):
    path = text_file_pipeline(tmp_path, tmp_path / "v.parquet", lines=[])
    path.write_text(path.read_text().replace("jsonl:", "parquet:"))
    code, _out, err = cli(capsys, "run", str(path))
    assert code == 1 and "is empty; add allow_empty: true" in err
    glob = tmp_path / "g.yaml"
    glob.write_text(
        f"source: {{glob: '{tmp_path}/nothing/*.jpg', column: path}}\nsteps: [{{op: image_decode, in: path, out: img}}]\nsink: {{parquet: {tmp_path}/g.parquet, columns: [path]}}\n"
    )
    code, _out, err = cli(capsys, "validate", str(glob))
    assert code == 1 and "matched no file" in err and "allow_empty: true" in err
    glob.write_text(glob.read_text().replace("column: path}", "column: path, allow_empty: true}"))
    code, out, err = cli(capsys, "run", str(glob), "--quiet")
    assert code == 0, err
    assert "read 0 rows, wrote 0" in out
    assert pq.read_schema(tmp_path / "g.parquet").names == ["path"]  # the schema is written


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    levels = ["a: &a ['x','x','x','x','x','x','x','x','x']"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("params:\n" + "".join(f"  {line}\n" for line in levels) + "source: {read_text: x}\n")
    with pytest.raises(PipelineError, match="aliases .* expand to more than 10000 values"):
        read_pipeline(path)


def test_a_one_shot_iterator_cannot_be_run_twice_silently():
    dc = ef.dc(x for x in range(3)).map(str)
    assert dc.to_list() == ["0", "1", "2"]
    with pytest.raises(EmbedflowError, match="one-shot iterator .* pass a list"):
        dc.to_list()


def test_milvus_under_skip_writes_the_errors_file(tmp_path, sample_images):
    requires("pymilvus", "milvus")
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(sample_images[0].read_bytes())
    (folder / "b.jpg").write_text("not an image")
    db = tmp_path / "s.db"
    pipeline = read_pipeline(ROOT / "pipelines" / "image_search_index.yaml", images=str(folder / "*.jpg"), db=str(db))
    summary = run_pipeline(pipeline, progress=False)
    assert (summary.written, summary.failed) == (1, 1)
    (record,) = [json.loads(line) for line in (tmp_path / "s.db.errors.jsonl").read_text().splitlines()]
    assert record["key"].endswith("b.jpg") and record["step"] == "image_decode"


def test_a_closed_pipe_ends_the_command_quietly():
    """`embedflow ops | head -1`: no 'Broken pipe' error line, exit 0."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "embedflow", "ops"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert b"Broken pipe" not in proc.stderr.read()


def test_ops_finds_by_part_of_a_name_or_a_near_spelling_and_lists_the_steps(capsys):
    def names(*args):
        code, out, err = cli(capsys, "ops", *args)
        return code, [line.split()[0] for line in out.splitlines() if line.strip()], err

    assert names("transformers")[1] == ["text_embedding.transformers", "word_embedding.transformers"]
    assert names("transfomers")[1] == ["text_embedding.transformers", "word_embedding.transformers"]  # a typo
    assert {"image_embedding.timm", "text_embedding.transformers", "embedding.torch"} <= set(names("EMBED")[1])
    assert names("image_*")[1] == ["image_decode", "image_embedding.timm", "image_text_embedding.clip"]
    code, listed, _ = names()
    assert code == 0 and {"chunk", "group", "map", "filter", "normalize"} <= set(listed)
    _, out, _ = cli(capsys, "ops")
    assert "chunk " in out and "[step of every chain: Python and YAML]" in out and "[step of every chain: Python]" in out
    code, out, _ = cli(capsys, "ops", "group")
    assert code == 0 and "a step of every chain" in out and "reduce" in out  # its documentation
    code, out, err = cli(capsys, "ops", "zzzz")
    assert code == 2 and "no operator or step matches 'zzzz'" in err and "chunk" in err and "Fix:" in err


@pytest.mark.parametrize("name", ["image-search", "text-search"])
def test_validate_finds_that_a_search_s_index_does_not_exist_yet(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no out/search.db here
    for command in ("validate", "run"):
        code, _out, err = cli(capsys, command, name, "--quiet") if command == "run" else cli(capsys, command, name)
        assert code == 1 and "milvus_search: the database 'out/search.db' does not exist yet" in err and "*-index" in err
        assert_one_line(err)
    assert not (tmp_path / "out").exists()  # nothing was made on the way
