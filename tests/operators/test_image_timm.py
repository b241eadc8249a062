"""image_embedding.timm: equal to timm called directly; offline model packages."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

import embedflow as ef
from embedflow.engines.replicas import cached


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    """A saved random resnet18: the weights are arbitrary, the check is exact equality."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path_factory.mktemp("ckpt") / "resnet18-random.pth"
    torch.save(model.state_dict(), path)
    return path, model


def _timm_direct(model, images):
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
        return model.forward_head(model.forward_features(batch), pre_logits=True).numpy()


def test_equals_timm_on_real_photos(resnet_checkpoint, sample_images):
    path, model = resnet_checkpoint
    photos = sample_images[:9]
    ours = (
        ef.glob["path"](*map(str, photos))
        .image_decode["path", "img"]()
        .image_embedding.timm["img", "vec"](model_name="resnet18", pretrained=False, checkpoint_path=str(path), batch_size=4)
        .to_numpy(column="vec")
    )
    theirs = _timm_direct(model, sorted(photos))
    assert ours.shape == (9, 512) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_paths_and_pil_images_are_accepted_directly(resnet_checkpoint, sample_images):
    path, model = resnet_checkpoint
    photo = sample_images[0]
    op = {"model_name": "resnet18", "pretrained": False, "checkpoint_path": str(path)}
    from_path = ef.dc([photo]).image_embedding.timm(**op).to_numpy()
    from_pil = ef.dc([Image.open(photo).convert("L")]).image_embedding.timm(**op).to_numpy()
    np.testing.assert_allclose(from_path, _timm_direct(model, [photo]), rtol=1e-4, atol=1e-5)
    assert from_pil.shape == (1, 512)


def test_packaged_efficientnet_lite0_classifies_the_cat(sample_images):
    """The model package's weights, renamed for timm, are real ImageNet weights."""
    import timm

    from embedflow.models import resolve_model

    checkpoint = resolve_model("efficientnet_lite0")
    assert checkpoint.endswith(".pth")
    model = timm.create_model("efficientnet_lite0", pretrained=False, checkpoint_path=checkpoint).eval()
    cat = next(p for p in sample_images if p.stem == "cat")
    from timm.data import create_transform, resolve_data_config

    x = create_transform(**resolve_data_config({}, model=model))(Image.open(cat).convert("RGB"))
    with torch.no_grad():
        top = int(model(x[None]).argmax())
    assert 281 <= top <= 285  # ImageNet's domestic cat classes


def test_pretrained_uses_the_installed_package_offline(sample_images):
    vecs = ef.dc(sample_images[:3]).image_embedding.timm(model_name="efficientnet_lite0").to_numpy()
    assert vecs.shape == (3, 1280)


def test_unknown_architecture_fails_at_build_time():
    with pytest.raises(ef.ParameterError, match=r"'resnet5O' is not a timm model.*Did you mean .resnet50."):
        ef.dc([1]).image_embedding.timm(model_name="resnet5O")


def test_pretrained_weights_offline_fail_at_once_in_one_line_with_the_choices():
    start = time.perf_counter()
    with pytest.raises(ef.ModelNotFoundError) as caught:
        ef.dc([np.zeros((8, 8, 3), np.uint8)]).image_embedding.timm(model_name="resnet18").to_list()
    message = str(caught.value)
    assert time.perf_counter() - start < 5
    assert "\n" not in message
    assert message.startswith("image_embedding.timm: cannot load model 'resnet18' offline")
    assert "HF_HUB_OFFLINE=1" in message and "timm/resnet18" in message
    assert "pretrained=False" in message and "checkpoint_path" in message


def test_pretrained_weights_the_hub_refuses_explain_the_choices(monkeypatch):
    import timm

    monkeypatch.setattr("embedflow.models.hub_unreachable", lambda: None)  # as if online

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise RuntimeError("network unreachable")
        return original(*args, **kwargs)

    original = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(OSError, match=r"no pretrained weights for 'resnet18'.*pretrained=False.*checkpoint_path"):
        ef.dc([np.zeros((8, 8, 3), np.uint8)]).image_embedding.timm(model_name="resnet18").to_list()


def test_extra_keyword_arguments_go_to_create_model(resnet_checkpoint, sample_images):
    import timm

    path, model = resnet_checkpoint
    photos = sample_images[:3]
    max_pooled = timm.create_model("resnet18", pretrained=False, global_pool="max").eval()
    max_pooled.load_state_dict(model.state_dict())
    got = ef.dc(photos).image_embedding.timm(model_name="resnet18", pretrained=False, checkpoint_path=str(path), global_pool="max").to_numpy()
    np.testing.assert_allclose(got, _timm_direct(max_pooled, photos), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, _timm_direct(model, photos))  # not the default average pooling


def test_channels_last_is_on_for_conv_nets_and_gives_the_same_vectors(resnet_checkpoint, sample_images):
    path, _model = resnet_checkpoint
    op = {"model_name": "resnet18", "pretrained": False, "checkpoint_path": str(path)}
    auto = ef.dc(sample_images[:4]).image_embedding.timm(**op)
    plain = ef.dc(sample_images[:4]).image_embedding.timm(channels_last=False, **op)
    np.testing.assert_allclose(auto.to_numpy(), plain.to_numpy(), rtol=1e-4, atol=1e-5)
    assert cached(auto.plan.steps[0])["cpu"].channels_last is True  # the replica the run set up
    assert cached(plain.plan.steps[0])["cpu"].channels_last is False


def test_cpu_decoded_batches_travel_as_uint8_and_normalise_to_timms_values(sample_images):
    """decode='cpu': the threads resize and crop, the batch is uint8 NHWC (a quarter of float
    pixels' bytes) and the device normalises it to exactly what timm's transform gives."""
    import torch
    from PIL import Image

    from embedflow.engines.replicas import cached
    from embedflow_operators._pixels import normalize_batch

    chain = ef.dc([str(p) for p in sample_images[:3]]).image_embedding.timm(model_name="resnet18", pretrained=False, decode="cpu")
    chain.to_list()
    op = cached(chain.plan.steps[0])["cpu"]
    batch = op.collate([op.preprocess(str(p)) for p in sample_images[:3]])
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (3, 224, 224, 3)
    pixels = normalize_batch(batch, *op.scale)
    expected = torch.stack([op.transform(Image.open(p).convert("RGB")) for p in sample_images[:3]])
    assert torch.equal(pixels, expected)
    assert pixels.is_contiguous(memory_format=torch.channels_last)


def test_a_huge_scan_is_decoded_to_8x_the_model_input_and_embeds_as_the_full_image(resnet_checkpoint, sample_images, tmp_path):
    """Issue 21: a path or bytes is decoded to at most 8x the model's input side (1792 pixels
    for 224) instead of held in full; the model sees 224 pixels either way."""
    path, model = resnet_checkpoint
    photo = Image.open(sample_images[0]).convert("RGB")
    huge = tmp_path / "huge.png"
    photo.resize((4000, 3000), Image.Resampling.BICUBIC).save(huge)  # one smooth 12-megapixel image
    ours = ef.dc([str(huge)]).image_embedding.timm(model_name="resnet18", pretrained=False, checkpoint_path=str(path)).to_numpy()
    want = _timm_direct(model, [huge])
    cosine = float((ours * want).sum() / (np.linalg.norm(ours) * np.linalg.norm(want)))
    assert cosine > 0.999
    chain = ef.dc([str(huge)]).image_embedding.timm(model_name="resnet18", pretrained=False, checkpoint_path=str(path))
    chain.to_list()
    assert cached(chain.plan.steps[0])["cpu"].decode_side == 8 * 224
