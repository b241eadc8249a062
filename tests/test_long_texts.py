"""Long texts: a run says how many texts were cut to the model's limit; chunk splits a text into
windows of the model's own tokens (with overlap), group joins the parts' vectors back per parent,
in order, and the result equals doing it by hand."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import embedflow as ef

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def long_texts(sample_texts):
    return [" ".join(sample_texts[i : i + 60]) for i in (0, 30, 60)]  # ~700-900 tokens each


def test_a_run_warns_once_with_the_count_of_cut_texts(long_texts):
    chain = ef.dc(["short", *long_texts, "also short"]).text_embedding.transformers(model_name=MINILM)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chain.to_list()
    messages = [str(w.message) for w in caught if "were cut" in str(w.message)]
    assert messages == [
        "text_embedding.transformers: 3 text(s) were longer than 256 tokens and were cut to that; "
        "to embed all of a long text, split it with .chunk(...) and join the parts with .group(...) (README: Long texts)"
    ]
    assert caught[0].filename == __file__  # points at the user's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ef.dc(["short"]).text_embedding.transformers(model_name=MINILM).to_list()  # nothing cut: no warning


def test_a_huge_text_costs_a_slice_and_keeps_the_tokens_of_the_whole(long_texts):
    """Issue 21: a 200 MB line took 16 GB and minutes in the tokenizer. The tokenizer now sees at
    most 64 characters a token of the limit, cut at whitespace: the vector is still that of the
    whole text's first 256 tokens (sentence-transformers' answer), and the text counts as cut."""
    from sentence_transformers import SentenceTransformer

    from embedflow_operators.text_embedding._tokens import CHARS_PER_TOKEN, Tokens

    huge = " ".join(long_texts) * 700  # ~4 MB of words
    seen = []
    bounded = Tokens._bounded

    def spy(self, text):
        kept, cut = bounded(self, text)
        seen.append(len(kept))
        return kept, cut

    st = SentenceTransformer(str(ef.resolve_model(MINILM)), device="cpu")
    want = st.encode([huge], normalize_embeddings=True)
    chain = ef.dc([huge]).text_embedding.transformers(model_name=MINILM, backend="torch").normalize()
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(Tokens, "_bounded", spy)
        got = chain.to_numpy()
    assert float((got * want).sum()) > 0.99999
    assert len(huge) > 4_000_000 and max(seen) <= 256 * CHARS_PER_TOKEN  # what reached the tokenizer
    assert any("1 text(s) were longer than 256 tokens" in str(w.message) for w in caught)


def test_chunks_are_token_windows_with_overlap_cut_from_the_text():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ef.resolve_model(MINILM))
    text = "The quick brown fox jumps over the lazy dog. " * 20
    rows = ef.dc["text"]([text, ""]).chunk["text", ("part", "index")](MINILM, max_tokens=50, overlap=10).to_list()
    parts = [r["part"] for r in rows if r["text"] == text]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [r["index"] for r in rows if r["text"] == text] == list(range(len(parts)))
    assert len(parts) == -(-(len(ids) - 10) // 40)  # windows of 50 every 40 tokens
    for i, part in enumerate(parts):
        assert part in text
        assert tokenizer(part, add_special_tokens=False)["input_ids"] == ids[i * 40 : i * 40 + 50]
    assert rows[-1] == {"text": "", "part": "", "index": 0}  # an empty text stays a row


def test_chunk_embed_group_equals_averaging_by_hand(long_texts):
    docs = ["a short one", *long_texts]
    got = (
        ef.dc["doc"](docs)
        .chunk["doc", "part"](MINILM)
        .text_embedding.transformers["part", "vec"](model_name=MINILM, batch_size=8)
        .group(column="vec")
        .normalize["vec", "vec"]()
        .to_list()
    )
    assert [r["doc"] for r in got] == docs  # one row per parent, in order
    parts = [[p for p, _ in ef.dsl.chunking.TokenChunks(MINILM)(d)] for d in docs]
    assert all(len(p) > 1 for p in parts[1:])  # the long ones really are in several parts
    for row, pieces in zip(got, parts):
        vectors = ef.dc(pieces).text_embedding.transformers(model_name=MINILM).to_numpy()
        want = vectors.mean(0) / np.linalg.norm(vectors.mean(0))
        np.testing.assert_allclose(row["vec"], want, atol=1e-5)


def test_group_mean_is_the_mean_of_the_parts_vectors_as_they_are():
    """No normalising afterwards to hide a sum: the mean itself, per group, in float32."""
    vectors = [np.array([1.0, 2.0]), np.array([3.0, 6.0]), np.array([5.0, -5.0]), np.array([0.5, 0.25]), np.array([1.5, 0.75])]
    rows = ef.dc["doc", "vec"](zip("aabcc", vectors)).group(column="vec", by="doc").to_list()
    assert [r["doc"] for r in rows] == ["a", "b", "c"]
    for row, want in zip(rows, ([2.0, 4.0], [5.0, -5.0], [1.0, 0.5])):
        assert row["vec"].dtype == np.float32 and row["vec"].tolist() == want
    parts = ef.dc(["ab", "c"]).flat_map(list).map(lambda ch: np.array([ord(ch), 1.0]))
    assert [v.tolist() for v in parts.group().to_list()] == [[97.5, 1.0], [99.0, 1.0]]


def test_group_by_a_column_keeps_the_list_or_the_first():
    rows = ef.dc["doc", "page"]([("a", 1), ("a", 2), ("b", 3)]).group(column="page", by="doc", reduce="list").to_list()
    assert rows == [{"doc": "a", "page": [1, 2]}, {"doc": "b", "page": [3]}]
    assert ef.dc["doc", "page"]([("a", 1), ("a", 2)]).group(column="page", by="doc", reduce="first").to_list() == [{"doc": "a", "page": 1}]
    with pytest.raises(ef.PlanError, match="reduce='sum' is not one of 'mean', 'list', 'first'"):
        ef.dc["doc", "page"]([]).group(column="page", reduce="sum")


def chunk_pipeline(tmp_path, long_texts, chunk="", embed="", sink=""):
    """docs.jsonl of two long texts and p.yaml: chunk, embed with MiniLM, group by id."""
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": i, "doc": t}) + "\n" for i, t in enumerate(long_texts[:2])))
    (tmp_path / "p.yaml").write_text(
        f"source: {{read_jsonl: {str(tmp_path / 'docs.jsonl')!r}, columns: [id, doc]}}\n"
        "steps:\n"
        f"  - {{chunk: {{model_name: {MINILM}{chunk}}}, in: doc, out: part}}\n"
        f"  - {{op: text_embedding.transformers, in: part, out: vec, with: {{model_name: {MINILM}{embed}}}}}\n"
        "  - {group: {column: vec, by: id}}\n" + sink
    )
    return tmp_path / "p.yaml"


def test_the_same_in_a_pipeline_file(tmp_path, long_texts):
    chunk_pipeline(tmp_path, long_texts, chunk=", max_tokens: 100, overlap: 10")
    from_file = ef.load_pipeline(tmp_path / "p.yaml").to_list()
    chain = ef.dc["id", "doc"](list(enumerate(long_texts[:2]))).chunk["doc", "part"](MINILM, max_tokens=100, overlap=10)
    by_hand = chain.text_embedding.transformers["part", "vec"](model_name=MINILM).group(column="vec", by="id").to_list()
    assert [r["id"] for r in from_file] == [0, 1]
    np.testing.assert_allclose(np.stack([r["vec"] for r in from_file]), np.stack([r["vec"] for r in by_hand]), atol=1e-6)
    (tmp_path / "bad.yaml").write_text("source: {items: [a]}\nsteps:\n  - {group: {column: vec, reduce: sum}}\n")
    with pytest.raises(ef.PipelineError, match=r"bad.yaml:3: steps\[0\] \(group\): group: reduce='sum' is not one of"):
        ef.load_pipeline(tmp_path / "bad.yaml")


def test_a_run_prints_only_embedflow_s_own_lines(tmp_path, long_texts, capfd):
    """No "Loading weights" bars, no "indexing errors" warning from the tokenizer chunk uses:
    the only output of a run is embedflow's (captured at the file descriptor, where
    transformers' own handlers write)."""
    from embedflow.cli import main

    chunk_pipeline(tmp_path, long_texts, embed=", backend: torch", sink=f"sink: {{jsonl: {str(tmp_path / 'v.jsonl')!r}}}\n")
    capfd.readouterr()
    assert main(["run", str(tmp_path / "p.yaml")]) == 0
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert lines and all(line.startswith(("embedflow: ", "read ")) for line in lines), lines
    assert any(line.startswith("read 2 rows, wrote 2, failed 0") for line in lines), lines
