"""YAML pipelines: schema, ${param}, errors with file:line, round trip with the Python chain."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import embedflow as ef
from embedflow.errors import PipelineError
from embedflow.pipelines import read_pipeline


@pytest.fixture
def lines(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("alpha\nbeta gamma\n\ndelta\n")
    return path


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def lengths(registered):
    @registered("test.vec")
    def vec(text: str, scale: float = 1.0):
        return np.array([len(text), text.count(" ")], np.float32) * scale

    return vec


def test_a_pipeline_builds_the_same_plan_as_the_chain(tmp_path, lines, lengths):
    path = write(
        tmp_path,
        f"""
        name: demo
        params: {{input: {lines}, scale: 2}}
        source: {{read_text: "${{input}}", column: text}}
        steps:
          - op: test.vec
            in: text
            out: vec
            with: {{scale: "${{scale}}"}}
          - {{op: normalize, in: vec, out: vec}}
          - select: [text, vec]
        sink: {{parquet: out.parquet}}
    """,
    )
    dc = ef.load_pipeline(path)
    chain = ef.read_text["text"](lines).test.vec["text", "vec"](scale=2).normalize["vec", "vec"]().select["text", "vec"]()
    assert dc.explain() == chain.explain()
    got, want = dc.to_list(), chain.to_list()
    assert [r["text"] for r in got] == ["alpha", "beta gamma", "", "delta"]
    np.testing.assert_allclose(np.stack([r["vec"] for r in got]), np.stack([r["vec"] for r in want]))


def test_round_trip_chain_to_yaml_and_back(tmp_path, lines, lengths):
    chain = ef.read_text["text"](lines).safe().test.vec["text", "v"](scale=3.0, batch_size=4).normalize["v"]().select["v"]().set_device("cpu")
    text = chain.to_yaml(tmp_path / "back.yaml", sink={"parquet": "o.parquet"})
    again = ef.load_pipeline(tmp_path / "back.yaml")
    assert again.explain() == chain.explain()
    assert "on_error: skip" in text and "device: cpu" in text
    np.testing.assert_allclose(again.to_numpy(), chain.to_numpy())
    bundled = read_pipeline("pipelines/image_embedding.yaml")
    assert ef.load_pipeline(write(tmp_path, bundled.collection.to_yaml(), "img.yaml")).explain() == bundled.collection.explain()


def test_steps_without_a_yaml_form_say_why(lines):
    with pytest.raises(ef.EmbedflowError, match=r"\.map\(fn\) step has no YAML form.*@ef.register"):
        ef.read_text["text"](lines).map["text", "n"](len).to_yaml()
    with pytest.raises(ef.EmbedflowError, match="source dc"):
        ef.dc(["a"]).to_yaml()


def test_params_override_with_yaml_types(tmp_path, lines, lengths):
    path = write(
        tmp_path,
        f"""
        params: {{input: {lines}, bs: 8}}
        source: {{read_text: "${{input}}"}}
        steps: [{{op: test.vec, in: text, out: v, batch_size: "${{bs}}"}}]
    """,
    )
    assert read_pipeline(path, bs="3").collection.plan.steps[0].options.batch_size == 3


@pytest.mark.parametrize(
    ("body", "line", "pattern"),
    [
        ("sourse: {read_text: x}\n", 1, r"unknown key 'sourse'.*Did you mean 'source'"),
        ("source: {read_text: x}\nsteps:\n  - op: normalise\n    in: text\n", 3, r"unknown operator 'normalise'.*Did you mean 'normalize'"),
        (
            "source: {read_text: x}\nsteps:\n  - op: text_embedding.transformers\n    in: text\n    with:\n      modle_name: m\n",
            6,
            r"unexpected parameter 'modle_name'.*Did you mean 'model_name'",
        ),
        ("source: {read_text: '${missing}'}\n", 1, r"unknown parameter \$\{missing\}.*Declared params: none"),
        ("source: {read_text: x}\nsteps:\n  - {op: normalize, in: text, batch_size: many}\n", 3, r"batch_size='many' must be a positive integer"),
        ("source: {read_text: x}\nsteps:\n  - {op: normalize, in: 5}\n", 3, r"in must be a column name"),
        ("source: {read_text: x}\nsteps:\n  - {op: normalize}\n", 3, r"missing 'in'"),
        ("source: {read_text: x}\nsteps:\n  - {op: normalize, in: text, with: {batch_size: 2}}\n", 3, r"execution option"),
        ("source: {read_text: x}\nsink: {parquet: o.parquet, colums: [a]}\n", 2, r"unknown key 'colums'.*Did you mean 'columns'"),
        ("source: {read_text: x}\nsink: {csv: o.csv}\n", 2, r"unknown key 'csv'.*Valid keys: parquet, jsonl, npy"),
        ("source: {read_text: x}\nsink: {parquet: o.parquet, columns: [txt]}\n", 2, r"no column 'txt'.*Did you mean 'text'"),
        ("source: {read_text: x, glob: y}\n", 1, r"exactly one of"),
        ("source: {read_text: x}\non_error: ignore\n", 2, r"on_error: 'ignore' is not one of raise, skip"),
        ("source: {read_text: x}\nsource: {glob: y}\n", 2, r"appears twice"),
        ("source: [read_text\n", 2, r"not valid YAML"),  # the parser notices at the end
        ("steps: []\n", 1, r"missing required key 'source'"),
    ],
)
def test_every_mistake_names_file_line_and_fix(tmp_path, body, line, pattern):
    path = write(tmp_path, body)
    with pytest.raises(PipelineError, match=pattern) as err:
        read_pipeline(path)
    assert str(err.value).startswith(f"{path}:{line}:"), str(err.value)


def test_unknown_param_override_lists_the_declared_ones(tmp_path):
    path = write(tmp_path, "params: {input: a}\nsource: {read_text: '${input}'}\n")
    with pytest.raises(PipelineError, match=r"--param inptu.*Did you mean 'input'"):
        read_pipeline(path, inptu="x")


def test_yaml_is_loaded_safely(tmp_path):
    path = write(tmp_path, "source: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(PipelineError, match="not valid YAML|could not determine a constructor"):
        read_pipeline(path)


def test_bundled_pipelines_validate():
    for name in ("text_embedding", "image_embedding"):
        pipeline = read_pipeline(f"pipelines/{name}.yaml")
        assert pipeline.sink is not None and pipeline.on_error == "skip"
