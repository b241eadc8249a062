"""The DataCollection DSL: laziness, order, named columns, generic steps, explain."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import embedflow as ef
from embedflow.errors import ColumnError, PlanError


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x


def test_building_and_explaining_runs_nothing():
    seen = Counter()
    reads = []

    def source():
        for i in range(5):
            reads.append(i)
            yield i

    dc = ef.dc(source()).map(seen).filter(lambda x: True).batch(2).head(1)
    text = dc.explain()
    assert repr(dc).endswith(text)
    assert seen.calls == 0 and reads == []
    assert "map" in text and "filter" in text and "batch" in text and "head" in text


def test_collections_are_immutable():
    base = ef.dc([1, 2, 3])
    doubled = base.map(lambda x: 2 * x)
    assert base.to_list() == [1, 2, 3]
    assert doubled.to_list() == [2, 4, 6]
    assert len(base.plan.steps) == 0 and len(doubled.plan.steps) == 1


def test_a_collection_runs_again_with_the_same_result():
    dc = ef.dc(range(10)).map(lambda x: x + 1)
    assert dc.to_list() == dc.to_list() == list(range(1, 11))


def test_head_stops_reading_the_source():
    pulled = []

    def numbers():
        for i in itertools.count():
            pulled.append(i)
            yield i

    assert ef.dc(numbers()).map(lambda x: x * 10).head(3).to_list() == [0, 10, 20]
    # the source reads ahead in its own thread, but only a few small chunks (1 + 2 + 4 ...)
    assert len(pulled) < 300


def test_order_is_kept_with_threads():
    import random
    import time

    def slow(x):
        time.sleep(random.random() / 1000)
        return x

    assert ef.dc(range(300)).map(slow, workers=4).to_list() == list(range(300))


def test_generic_steps():
    assert ef.dc(range(6)).filter(lambda x: x % 2).to_list() == [1, 3, 5]
    assert ef.dc(["a b", "", "c"]).flat_map(str.split).to_list() == ["a", "b", "c"]
    assert ef.dc(range(5)).batch(2).to_list() == [[0, 1], [2, 3], [4]]
    assert ef.dc(range(5)).head(0).to_list() == []
    assert list(ef.dc("xyz")) == ["x", "y", "z"]


def test_named_columns_select_inputs_and_outputs():
    rows = ef.dc["text"](["a", "bb"]).map["text", "n"](len).to_list()
    assert rows == [{"text": "a", "n": 1}, {"text": "bb", "n": 2}]


def test_several_inputs_and_outputs_use_tuples():
    dc = ef.dc["a", "b"]([(1, 2), (3, 4)]).map[("a", "b"), ("s", "d")](lambda a, b: (a + b, a - b))
    assert dc.to_list() == [{"a": 1, "b": 2, "s": 3, "d": -1}, {"a": 3, "b": 4, "s": 7, "d": -1}]
    assert dc.columns == ("a", "b", "s", "d")


def test_one_selector_writes_back_to_the_same_column():
    assert ef.dc["x"]([1, 2]).map["x"](lambda v: v * 3).to_list() == [{"x": 3}, {"x": 6}]


def test_named_filter_flat_map_select_exclude():
    dc = ef.dc["text"](["a b", "c"]).flat_map["text", "word"](str.split)
    assert dc.to_list() == [{"text": "a b", "word": "a"}, {"text": "a b", "word": "b"}, {"text": "c", "word": "c"}]
    assert dc.filter["word"](lambda w: w != "b").select["word"]().to_list() == [{"word": "a"}, {"word": "c"}]
    assert dc.exclude["text"]().to_list()[0] == {"word": "a"}


def test_named_map_without_selectors_gets_the_row():
    rows = ef.dc["a"]([1]).map(lambda row: {**row, "b": row["a"] + 1}).to_list()
    assert rows == [{"a": 1, "b": 2}]


def test_unknown_column_fails_when_the_chain_is_built():
    dc = ef.dc["text"](["a"])
    with pytest.raises(ColumnError, match=r"no column 'txt'.*Did you mean 'text'"):
        dc.map["txt", "n"](len)
    with pytest.raises(ColumnError, match="no column 'nope'"):
        dc.select["nope"]()


def test_selectors_on_unnamed_rows_say_how_to_name_them():
    with pytest.raises(ColumnError, match=r"ef.dc\['text'\]"):
        ef.dc(["a"]).map["text", "n"](len)


def test_operator_without_selectors_on_named_rows_explains_the_fix():
    with pytest.raises(ColumnError, match=r"say which column.*normalize\['in_col', 'out_col'\]"):
        ef.dc["v"]([np.ones(2)]).normalize()


def test_missing_column_at_run_time_lists_the_columns(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n')
    with pytest.raises(ef.ItemError, match=r"no column 'body'.*Columns: \['text'\]"):
        ef.read_jsonl(path).map["body", "n"](len).to_list()


def test_bad_step_arguments():
    with pytest.raises(PlanError, match="positive integer"):
        ef.dc([1]).batch(0)
    with pytest.raises(PlanError, match="non-negative"):
        ef.dc([1]).head(-1)
    with pytest.raises(PlanError, match="not a device"):
        ef.dc([1]).set_device("gpu")
    with pytest.raises(PlanError, match="not an engine"):
        ef.dc([1]).set_engine("spark")
    with pytest.raises(PlanError, match="batch_size=0 must be a positive integer"):
        ef.dc([1]).map(abs, batch_size=0)
    with pytest.raises(TypeError, match="ambiguous"):
        bool(ef.dc([1]))


def test_the_plan_holds_what_to_compute_and_the_settings_how_to_run_it():
    dc = ef.dc([1]).set_device("cpu").set_engine("ray").set_progress(False).safe(errors=[])
    assert dc.plan.device == "cpu"
    assert (dc.settings.engine, dc.settings.progress, dc.settings.errors) == ("ray", False, [])
    assert not {"engine", "progress", "errors"} & set(vars(dc.plan))
    assert "device=cpu" in dc.explain() and "physical plan (ray engine)" in dc.explain()
    # a sink's engine= wins for that run only, and an unknown one is refused when the sink runs
    assert dc.map(abs).to_list(engine="local") == [1]
    with pytest.raises(PlanError, match="'spark' is not an engine"):
        ef.dc([1]).to_list(engine="spark")


def test_explain_shows_operators_columns_and_options():
    text = ef.glob["path"]("photos/*.jpg").image_decode["path", "img"](workers=2).normalize["img", "vec"](p=1).select["path", "vec"]().explain()
    assert "glob('photos/*.jpg') -> path" in text
    assert "image_decode()  path -> img  workers=2" in text
    assert "normalize(p=1)  img -> vec" in text
    assert "select path, vec" in text


def test_dir_lists_installed_operators_and_namespaces():
    dc = ef.dc([1])
    names = dir(dc)
    assert {"image_decode", "image_embedding", "text_embedding", "normalize", "map", "to_numpy"} <= set(names)
    assert "timm" in dir(dc.image_embedding)


MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_explain_prints_the_physical_plan_with_the_options_resolved_and_why():
    chain = ef.dc(["a"]).image_decode(workers=3).map(str).text_embedding.transformers(model_name=MINILM, batch_size=64).normalize().head(2)
    physical = chain.explain().split("physical plan (local engine)\n", 1)[1].splitlines()
    assert physical[0] == "  pool    image_decode  (workers=3)"
    assert physical[1] == "  cheap   map  (1 thread)"
    assert physical[2].startswith("  model   text_embedding.transformers  (device=cpu (auto: no GPU here), dtype=fp32 (auto: cpu), batch_size=64, ")
    assert "max_batch_tokens=None" in physical[2] and "sorted in windows of" in physical[2] and physical[2].endswith(", in order)")
    assert physical[3:] == ["  cheap   normalize  (1 thread)", "  limit   2"]
    cpu = ef.dc(["a"]).text_embedding.transformers(model_name=MINILM).explain()
    assert "batch_size=32 (operator default)" in cpu and "processes=" not in cpu.split("physical plan")[1]  # no processes on the CPU


def test_explain_says_which_values_a_gpu_changes(monkeypatch):
    """On CUDA the batch size, token cap, precision and tokenizer processes are chosen for the
    device — explain() names each as auto, and what the user set stays as set."""
    from embedflow.engines import physical, prepare_processes

    monkeypatch.setattr(physical, "resolve_devices", lambda asked: ["cuda:0", "cuda:1"])
    monkeypatch.setattr(physical, "precision", lambda device, dtype: dtype or "bf16")
    monkeypatch.setattr(prepare_processes, "cpu_count", lambda: 16)
    auto = ef.dc(["a"]).text_embedding.transformers(model_name=MINILM).explain().split("physical plan")[1]
    for part in (
        "device=cuda:0,cuda:1 (auto: every visible GPU)",
        "dtype=bf16 (auto: cuda)",
        "batch_size=256 (auto: cuda)",
        "max_batch_tokens=32768 (auto: cuda)",
        "sorted in windows of 8192",
        "processes=14 (auto: cuda, cores)",
        "workers=14 (auto: one per process)",
    ):
        assert part in auto, (part, auto)
    chosen = ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, batch_size=64, max_batch_tokens=4096, processes=2, dtype="fp16")
    text = chosen.explain().split("physical plan")[1]
    for part in ("dtype=fp16,", "batch_size=64,", "max_batch_tokens=4096,", "processes=2,", "workers=2 (auto: one per process)"):
        assert part in text, (part, text)
