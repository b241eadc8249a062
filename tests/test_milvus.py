"""Milvus Lite: index with a sink, search with milvus_search, the bundled search pipelines."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import embedflow as ef
from embedflow.pipelines import read_pipeline, run_pipeline

from .conftest import ROOT, requires

requires("pymilvus", "milvus")

pytestmark = pytest.mark.slow
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def count(db, collection):
    from embedflow.io.milvus import client

    c = client(db)
    try:
        return c.get_collection_stats(collection)["row_count"]
    finally:
        c.close()


def test_index_sentences_then_an_exact_member_comes_back_first(tmp_path, sample_texts):
    db = str(tmp_path / "search.db")
    index = read_pipeline(ROOT / "pipelines" / "text_search_index.yaml", db=db)
    assert run_pipeline(index, progress=False).written == len(sample_texts)
    assert count(db, "sentences") == len(sample_texts)
    run_pipeline(index, progress=False)  # again: upserts by row key, no duplicates
    assert count(db, "sentences") == len(sample_texts)

    query = sample_texts[24]
    hits = (
        ef.dc["q"]([query])
        .text_embedding.transformers["q", "v"](model_name=MINILM)
        .normalize["v"]()
        .milvus_search["v", "hits"](uri=db, collection="sentences", limit=3, fields=["text"])
        .to_list()[0]["hits"]
    )
    assert hits[0]["text"] == query and hits[0]["id"] == "24"
    assert hits[0]["distance"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["distance"] >= hits[1]["distance"] >= hits[2]["distance"]


def run_cli(args, capsys):
    """The CLI in this process: Milvus Lite locks its database to one process at a time, and
    this test process already holds it open from indexing."""
    from embedflow.cli import main

    code = main(args)
    return code, capsys.readouterr().out


def test_reverse_image_search_from_yaml(tmp_path, capsys):
    db = str(tmp_path / "search.db")
    run_pipeline(read_pipeline(ROOT / "pipelines" / "image_search_index.yaml", db=db), progress=False)
    assert count(db, "photos") == 36
    code, out = run_cli(
        [
            "run",
            str(ROOT / "pipelines" / "image_search.yaml"),
            "--quiet",
            "--param",
            f"db={db}",
            "--param",
            f"query={ROOT / 'data' / 'images' / 'coffee.jpg'}",
            "--param",
            "limit=3",
        ],
        capsys,
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"query: {ROOT / 'data' / 'images' / 'coffee.jpg'}"
    assert lines[1].split()[1] == "1.000" and lines[1].endswith("coffee.jpg")
    assert {line.split()[2].rsplit("/", 1)[-1] for line in lines[2:4]} == {"coffee_crop.jpg", "coffee_mirror.jpg"}


def test_text_search_pipeline_prints_the_top_hits(tmp_path, capsys):
    db = str(tmp_path / "search.db")
    run_pipeline(read_pipeline(ROOT / "pipelines" / "text_search_index.yaml", db=db), progress=False)
    code, out = run_cli(
        ["run", str(ROOT / "pipelines" / "text_search.yaml"), "--quiet", "--param", f"db={db}", "--param", "query=how do I cook a tomato sauce?"],
        capsys,
    )
    assert code == 0
    assert out.splitlines()[0] == "query: how do I cook a tomato sauce?"
    assert "Simmer the tomatoes with garlic and olive oil" in out.splitlines()[1]


def test_to_milvus_from_python_with_a_key_column(tmp_path):
    db = str(tmp_path / "v.db")
    vecs = np.eye(3, dtype=np.float32)
    rows = [(f"id{i}", vecs[i], f"t{i}") for i in range(3)]
    dc = ef.dc["id", "vec", "text"](rows)
    assert dc.to_milvus(db, "c", key="id", fields=["text"]) == 3
    assert dc.to_milvus(db, "c", key="id", fields=["text"]) == 3
    assert count(db, "c") == 3
    hits = ef.dc["v"]([vecs[1]]).milvus_search["v", "h"](uri=db, collection="c", limit=1).to_list()[0]["h"]
    assert hits[0]["id"] == "id1" and hits[0]["text"] == "t1"
    with pytest.raises(ValueError, match="no collection .nope."):
        ef.dc["v"]([vecs[0]]).milvus_search["v", "h"](uri=db, collection="nope").to_list()


def test_show_and_html_rendering(capsys, sample_images):
    dc = ef.dc["path"]([str(p) for p in sample_images[:2]]).image_decode["path", "img"]().map["img", "vec"](lambda im: im.mean(axis=(0, 1)) / 255)
    dc.show(2)
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["path", "img", "vec"]
    assert "<image" in printed and "(3,)" in printed
    page = dc._repr_html_()
    assert page.count('<img src="data:image/png;base64,') == 4  # thumbnails for the path and the array
    assert "<table" in page and "DataCollection plan" in page and "(3,)" in page


def test_without_pymilvus_the_message_says_how_to_install(tmp_path):
    code = (
        "import sys; sys.modules['pymilvus'] = None\n"
        "import embedflow as ef\n"
        "try:\n    ef.dc['vec']([[1.0]]).to_milvus('x.db', 'c')\nexcept ef.PlanError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Milvus support needs pymilvus and Milvus Lite, which are not installed: pip install 'embedflow[milvus]'"


def test_an_incremental_run_makes_the_collection_mirror_the_input(tmp_path, registered):
    """Edits, additions and removals: changed and new rows upserted, removed ones deleted, and
    only the changed and new rows computed."""
    from embedflow.io.milvus import client

    calls = []

    @registered("mirror.vec")
    def vec(text: str) -> np.ndarray:
        calls.append(text)
        return np.array([len(text), text.count("e"), 1.0], np.float32)

    data, db = tmp_path / "in.txt", tmp_path / "v.db"
    data.write_text("alpha\nbeta\ngamma\ndelta\n")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"source: {{read_text: {data}, column: text, key: text}}\n"
        "steps:\n  - {op: mirror.vec, in: text, out: vec}\n"
        f"sink: {{milvus: {db}, collection: c, vector: vec, fields: [text]}}\n"
    )
    assert run_pipeline(read_pipeline(pipeline), progress=False).written == 4
    data.write_text("alpha\nbeta, edited\ndelta\nepsilon\n")  # beta edited (a new key), gamma removed, epsilon added
    calls.clear()
    summary = run_pipeline(read_pipeline(pipeline), progress=False)
    assert (summary.read, summary.reused, summary.written) == (4, 2, 4)
    assert sorted(calls) == ["beta, edited", "epsilon"]
    c = client(str(db))
    try:
        found = c.query("c", filter='id != ""', output_fields=["id", "text", "vector"])
    finally:
        c.close()
    assert sorted(r["id"] for r in found) == ["alpha", "beta, edited", "delta", "epsilon"]
    by_id = {r["id"]: r for r in found}
    np.testing.assert_allclose(by_id["epsilon"]["vector"], [7.0, 1.0, 1.0])
