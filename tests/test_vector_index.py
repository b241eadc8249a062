"""In-memory search: exact top-k for each metric (checked against brute force), saved and loaded
as Parquet, and the same hits as milvus_search so a pipeline swaps one step for the other."""

from __future__ import annotations

import numpy as np
import pytest

import embedflow as ef
from embedflow.io.vector_index import VectorIndex

from .conftest import ROOT, requires

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2", "COSINE"])
def test_top_k_equals_brute_force(metric):
    rng = np.random.default_rng(0)
    stored, queries = rng.normal(size=(500, 24)).astype(np.float32), rng.normal(size=(7, 24)).astype(np.float32)
    index = VectorIndex(stored, [{"n": i} for i in range(500)], metric)
    if metric.lower() == "cosine":
        unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
        scores, best = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T, -1
    elif metric == "ip":
        scores, best = queries @ stored.T, -1
    else:
        scores, best = np.linalg.norm(queries[:, None] - stored[None], axis=2), 1
    for query_hits, row in zip(index.search(queries, limit=10), scores):
        want = np.argsort(best * row, kind="stable")[:10]
        assert [h["id"] for h in query_hits] == want.tolist()
        assert [h["n"] for h in query_hits] == want.tolist()
        np.testing.assert_allclose([h["distance"] for h in query_hits], row[want], rtol=1e-4, atol=1e-4)


def test_a_limit_beyond_the_size_and_a_wrong_dimension():
    index = VectorIndex(np.eye(3), None)
    assert [h["id"] for h in index.search(np.array([0.0, 1.0, 0.1]), limit=10)[0]] == [1, 2, 0]
    with pytest.raises(ef.EmbedflowError, match="a query has 2 dimensions, the index holds vectors of 3"):
        index.search(np.ones(2))
    with pytest.raises(ef.ParameterError, match="metric='dot' is not one of 'cosine', 'ip', 'l2'"):
        ef.dc([np.ones(3)]).nearest(index=index, metric="dot")


def test_an_index_is_saved_and_loaded_and_a_parquet_sink_is_an_index(tmp_path, sample_texts):
    chain = ef.dc["text"](sample_texts).text_embedding.transformers["text", "vec"](model_name=MINILM).normalize["vec", "vec"]()
    index = chain.to_index(fields=["text"])
    saved = index.save(tmp_path / "sentences.parquet")
    loaded = ef.load_index(saved)
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert loaded.fields == [{"text": t} for t in sample_texts]
    chain.to_parquet(tmp_path / "written.parquet")  # what a pipeline's parquet sink writes
    query = chain.to_numpy("vec")[:3]
    assert ef.load_index(tmp_path / "written.parquet").search(query, 4) == index.search(query, 4)
    hits = ef.dc(list(query)).nearest(index=str(saved), limit=4).to_list()
    assert hits == index.search(query, 4)
    assert hits[0][0]["text"] == sample_texts[0] and hits[0][0]["distance"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ef.EmbedflowError, match="index file '.*nowhere.parquet' does not exist; build it first"):
        ef.dc(list(query)).nearest(index=str(tmp_path / "nowhere.parquet")).to_list()


@pytest.mark.slow
def test_the_same_hits_as_milvus_search_changing_one_step(tmp_path, sample_texts):
    requires("pymilvus", "milvus")
    from embedflow.pipelines import read_pipeline, run_pipeline

    db, table = str(tmp_path / "s.db"), str(tmp_path / "s.parquet")
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(sample_texts) + "\n")
    run_pipeline(read_pipeline("text-search-index", input=str(data), db=db), progress=False)
    (tmp_path / "index.yaml").write_text(
        f"source: {{read_text: {str(data)!r}, column: text}}\n"
        "steps:\n  - {op: text_embedding.transformers, in: text, out: vec, with: {model_name: sentence-transformers/all-MiniLM-L6-v2}}\n"
        "  - {op: normalize, in: vec, out: vec}\n"
        f"sink: {{parquet: {table!r}, columns: [text, vec]}}\n"
    )
    run_pipeline(read_pipeline(tmp_path / "index.yaml"), progress=False)
    milvus = ef.pipeline("text-search", db=db, limit=5)
    # text_search.yaml with its milvus_search step swapped for nearest: one line changes
    lines = (ROOT / "pipelines" / "text_search.yaml").read_text().splitlines()
    swapped = [
        f"  - {{op: nearest, in: vec, out: hits, with: {{index: {table!r}, limit: 5, fields: [text]}}}}" if "milvus_search" in line else line
        for line in lines
    ]
    assert sum(a != b for a, b in zip(lines, swapped)) == 1
    (tmp_path / "memory.yaml").write_text("\n".join(swapped) + "\n")
    memory = ef.pipeline(tmp_path / "memory.yaml")
    for query in ("a sleepy cat", "the weather tomorrow", "how to cook pasta"):
        a, b = milvus(query), memory(query)
        assert [h["text"] for h in a] == [h["text"] for h in b]
        np.testing.assert_allclose([h["distance"] for h in a], [h["distance"] for h in b], atol=1e-4)
