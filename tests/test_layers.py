"""Any layer of any network, token and word vectors, projections, and the two examples."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import embedflow as ef

from .conftest import ROOT

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_interception_equals_the_truncated_resnet():
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    images = [torch.rand(3, 64, 64) for _ in range(5)]
    truncated = torch.nn.Sequential(*list(resnet.children())[:-1])
    with torch.no_grad():
        expected = truncated(torch.stack(images)).flatten(1).numpy()
    got = ef.dc(images).embedding.torch(model=resnet, layer=-2, batch_size=2).to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    logits = ef.dc(images).embedding.torch(model=resnet, layer=-1).to_numpy()
    with torch.no_grad():
        np.testing.assert_allclose(logits, resnet(torch.stack(images)).numpy(), rtol=1e-5, atol=1e-5)
    named = ef.dc(images).embedding.torch(model=resnet, layer="layer4", pool="none").to_list()[0]
    assert named.shape == (512, 2, 2)
    out = resnet(torch.rand(1, 3, 64, 64))  # the model itself is unchanged: no hook left behind
    assert out.shape == (1, 1000)


def test_the_hook_lives_only_during_the_call_and_later_layers_do_not_run():
    calls = []

    class Count(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), Count(), torch.nn.Linear(4, 2))
    got = ef.dc([[1.0, 2.0, 3.0]] * 5).embedding.torch(model=net, layer="1", batch_size=5).to_numpy()
    assert got.shape == (5, 4) and (got >= 0).all()  # the ReLU's output
    assert calls == []  # the forward pass stopped at the caught layer
    assert all(not m._forward_hooks for m in net.modules())  # no hook left behind
    net(torch.zeros(2, 3))
    assert calls == [2]  # the model runs whole again


def test_bad_layer_names_fail_at_build_time_with_close_matches():
    net = torch.nn.Sequential()
    net.add_module("fc1", torch.nn.Linear(2, 2))
    with pytest.raises(ef.ParameterError, match=r"layer='fc_1' is not a module.*Did you mean 'fc1'"):
        ef.dc([[1.0, 2.0]]).embedding.torch(model=net, layer="fc_1")
    with pytest.raises(ef.ParameterError, match="negative index"):
        ef.dc([[1.0, 2.0]]).embedding.torch(model=net, layer=3)


def test_timm_layer_equals_timm_feature_maps(tmp_path, sample_images):
    import timm
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    features = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(3,)).eval()
    wanted = features.state_dict().keys()  # the feature net stops after layer3
    features.load_state_dict({k: v for k, v in model.state_dict().items() if k in wanted})
    transform = create_transform(**resolve_data_config({}, model=model))
    photos = sample_images[:3]
    with torch.no_grad():
        maps = features(torch.stack([transform(Image.open(p).convert("RGB")) for p in photos]))[0]
    expected = maps.mean(dim=(2, 3)).numpy()
    got = ef.dc(photos).image_embedding.timm(model_name="resnet18", pretrained=False, checkpoint_path=str(path), layer="layer3").to_numpy()
    assert got.shape == (3, 256)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_transformers_layer_equals_the_hidden_state(minilm_path, sample_texts):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    texts = sample_texts[:4]
    got = ef.dc(texts).text_embedding.transformers(model_name=MINILM, layer=-2).to_numpy()
    for text, vec in zip(texts, got):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states[-2][0]
        np.testing.assert_allclose(vec, hidden.mean(0).numpy(), atol=1e-5)


def test_token_matrix_with_its_tokens(minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    rows = (
        ef.dc["text"](["Alligators are reptiles.", "Hi"])
        .text_embedding.transformers["text", ("vec", "tokens")](model_name=MINILM, pooling="none", return_tokens=True)
        .to_list()
    )
    for row in rows:
        ids = tokenizer(row["text"])["input_ids"]
        assert row["tokens"] == tokenizer.convert_ids_to_tokens(ids)
        assert row["vec"].shape == (len(ids), 384)
    with pytest.raises(ef.ParameterError, match="return_tokens=True needs pooling='none'"):
        ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, return_tokens=True)


def test_word_vectors_are_rows_of_the_embedding_matrix(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    table = AutoModel.from_pretrained(minilm_path).get_input_embeddings().weight.detach().numpy()
    vecs, tokens = ef.dc(["turnip eagle"]).word_embedding.transformers(model_name=MINILM).to_list()[0]
    ids = tokenizer("turnip eagle", add_special_tokens=False)["input_ids"]
    assert tokens == tokenizer.convert_ids_to_tokens(ids)
    np.testing.assert_array_equal(vecs, table[ids])


def test_pca_matches_numpy_svd_up_to_sign():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    got = ef.dc(list(x)).project(dim=3).to_numpy()
    centred = x - x.mean(0)
    _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:3].T
    for axis in range(3):
        sign = np.sign(got[:, axis] @ expected[:, axis])
        np.testing.assert_allclose(got[:, axis], sign * expected[:, axis], rtol=1e-4, atol=1e-4)
    named = ef.dc["v", "name"]([(v, str(i)) for i, v in enumerate(x)]).project["v", "xy"](dim=2).to_list()
    assert named[0]["xy"].shape == (2,) and named[0]["name"] == "0"


def test_plot_writes_2d_and_3d_pictures(tmp_path):
    pts3 = [np.random.default_rng(i).normal(size=3) for i in range(10)]
    out = ef.dc["p", "k"]([(p, i % 3) for i, p in enumerate(pts3)]).plot(tmp_path / "3d.png", label="k", annotate="k")
    assert Image.open(out).size[0] > 100
    with pytest.raises(ef.PlanError, match="2-D or 3-D"):
        ef.dc([np.ones(5), np.zeros(5)]).plot(tmp_path / "bad.png")
    with pytest.raises(ef.PlanError, match="project\\(\\) has no Ray Data form"):
        pytest.importorskip("ray")
        ef.dc([np.ones(3)] * 5).project().set_engine("ray").to_list()


def test_layers_command_lists_names_and_shapes(capsys):
    from embedflow.cli import main

    assert main(["layers", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "layer3" in out and "(1, 256, 14, 14)" in out and "top-level layers" in out


def example(name: str):
    """A script of examples/ imported as a module."""
    import importlib

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.mark.slow
def test_digit_example_penultimate_layer_beats_raw_pixels(tmp_path):
    result = example("digits").main(out_dir=str(tmp_path))
    assert result["penultimate layer (64 values)"] > result["raw pixels (64 values)"] + 0.03
    assert result["before softmax (10 values)"] > result["raw pixels (64 values)"]
    assert (tmp_path / "digits.png").stat().st_size > 10_000


@pytest.mark.slow
def test_word_example_puts_alligator_next_to_crocodile(tmp_path):
    neighbours = example("words").main(out_dir=str(tmp_path))
    assert neighbours["alligator"][0][0] == "crocodile"
    assert neighbours["violin"][0][0] == "cello"
    assert (tmp_path / "words.png").exists()
