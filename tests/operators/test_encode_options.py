"""sentence-transformers' encode options on text_embedding.transformers — prompt, truncate_dim,
normalize, precision (int8, uint8, binary, ubinary with quantize_embeddings' calibration) — give
what sentence-transformers gives; return_token_ids beside return_tokens; the quantize step."""

from __future__ import annotations

import numpy as np
import pytest

import embedflow as ef

from ..conftest import DATA

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def st():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(ef.resolve_model(MINILM)), device="cpu")


def embed(texts, **options):
    return ef.dc(texts).text_embedding.transformers(model_name=MINILM, **options).to_list()


def test_prompt_truncate_dim_and_normalize_equal_sentence_transformers(st, sample_texts):
    texts = sample_texts[:40]
    want = st.encode(texts, prompt="query: ", truncate_dim=128, normalize_embeddings=True)
    got = np.stack(embed(texts, prompt="query: ", truncate_dim=128, normalize=True))
    assert got.shape == (40, 128)
    np.testing.assert_allclose(got, want, atol=2e-6)
    plain = np.stack(embed(texts[:3], normalize=True))
    assert float((plain * st.encode(texts[:3], normalize_embeddings=True)).sum(1).min()) > 0.99999  # no prompt: unchanged
    assert float((plain[:, :128] * got[:3]).sum(1).max()) < 0.999  # the prompt changes the vectors


@pytest.fixture(scope="module")
def corpus(st):
    """100 sentences to quantize and 300 to calibrate on, with sentence-transformers' vectors."""
    lines = (DATA / "texts" / "python_docs.txt").read_text(encoding="utf-8").splitlines()
    calibration, texts = lines[:300], lines[300:400]
    return texts, st.encode(calibration, normalize_embeddings=True), st.encode(texts, normalize_embeddings=True)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precision_equals_quantize_embeddings_with_the_same_calibration(corpus, precision, tmp_path):
    from sentence_transformers.util.quantization import quantize_embeddings

    texts, reference, vectors = corpus
    want = quantize_embeddings(vectors, precision, calibration_embeddings=reference)
    np.save(tmp_path / "calibration.npy", reference)
    options = {"calibration": str(tmp_path / "calibration.npy")} if precision in ("int8", "uint8") else {}
    got = np.stack(embed(texts, normalize=True, precision=precision, **options))
    assert got.dtype == want.dtype and got.shape == want.shape
    # the same buckets, except where float rounding puts a value on the other side of a step
    same = (got == want).mean()
    assert same > 0.995, same
    assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= (1 if precision in ("int8", "uint8") else 255)


def test_int8_without_a_calibration_says_what_to_give():
    with pytest.raises(ef.ParameterError, match=r"precision='int8' needs a calibration: calibration= \(embeddings, or a .npy file"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, precision="int8")
    with pytest.raises(ef.ParameterError, match="precision='int4' is not one of 'float32', 'int8', 'uint8', 'binary', 'ubinary'"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, precision="int4")
    with pytest.raises(ef.ParameterError, match="needs one vector per text; with pooling='none' use precision='float32'"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, precision="binary", pooling="none")


def test_token_ids_beside_tokens(st):
    (matrix, tokens, ids), (matrix2, ids2) = (
        embed(["hello world"], pooling="none", return_tokens=True, return_token_ids=True)[0],
        embed(["hello world"], pooling="none", return_token_ids=True)[0],
    )
    assert tokens == ["[CLS]", "hello", "world", "[SEP]"]
    assert ids == ids2 == st.tokenizer("hello world")["input_ids"]
    np.testing.assert_array_equal(matrix, matrix2)
    with pytest.raises(ef.ParameterError, match="return_token_ids=True needs pooling='none'"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, return_token_ids=True)


def test_the_quantize_step_works_after_any_vectors():
    from sentence_transformers.util.quantization import quantize_embeddings

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 16)).astype(np.float32)
    for precision in ("int8", "ubinary"):
        got = np.stack(ef.dc(list(vectors)).quantize(precision=precision, calibration=vectors).to_list())
        np.testing.assert_array_equal(got, quantize_embeddings(vectors, precision, calibration_embeddings=vectors))


def test_normalize_true_is_the_normalize_step_bit_for_bit(sample_texts):
    """One normalisation (issue 23): the parameter exists for precision=, which quantizes after
    it inside the step; without precision it is exactly a .normalize() step after the step."""
    chain = ef.dc(sample_texts[:12]).text_embedding.transformers(model_name=MINILM, batch_size=4)
    stepped = chain.normalize().to_numpy()
    inside = ef.dc(sample_texts[:12]).text_embedding.transformers(model_name=MINILM, batch_size=4, normalize=True).to_numpy()
    assert inside.dtype == stepped.dtype == np.float32
    np.testing.assert_array_equal(inside, stepped)
