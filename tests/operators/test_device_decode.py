"""decode='device' (the GPU decode path, run here on the CPU through torchvision's decoder):
the embeddings of the bundled photos match the PIL path (cosine > 0.999), a PNG falls back to
PIL, a corrupt file is named as on the CPU path and skipped under .safe() with every good row kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import embedflow as ef


def embed(paths, decode, safe=None):
    chain = ef.dc(paths)
    if safe is not None:
        chain = chain.safe(errors=safe)
    return chain.image_embedding.timm(model_name="efficientnet_lite0", decode=decode, batch_size=8).normalize().to_numpy()


def test_device_decode_matches_the_pil_path(sample_images):
    paths = [str(p) for p in sample_images]
    on_device, on_cpu = embed(paths, "device"), embed(paths, "cpu")
    cosine = (on_device * on_cpu).sum(1)
    assert cosine.min() > 0.9999, cosine.min()  # uint8 resize as PIL's, to within one level (measured 0.99994)


def test_other_formats_fall_back_and_a_bad_file_is_named(sample_images, tmp_path):
    png = tmp_path / "photo.png"
    Image.open(sample_images[0]).save(png)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    good = [str(sample_images[1]), str(png)]
    np.testing.assert_allclose(embed(good, "device")[1], embed([str(sample_images[0])], "cpu")[0], atol=2e-2)
    with pytest.raises(ef.ItemError, match="broken.jpg"):
        embed([*good, str(bad)], "device")
    failures = []
    kept = embed([good[0], str(bad), good[1]], "device", safe=failures)
    assert len(kept) == 2 and len(failures) == 1 and "broken.jpg" in str(failures[0])


def test_auto_decodes_on_the_cpu_here_and_a_wrong_value_is_refused():
    chain = ef.dc([np.zeros((32, 32, 3), np.uint8)]).image_embedding.timm(model_name="resnet18", pretrained=False)
    chain.to_list()
    from embedflow.engines.replicas import cached

    assert cached(chain.plan.steps[0])["cpu"].on_device is False
    with pytest.raises(ef.ParameterError, match="decode='gpu' is not one of 'auto', 'cpu', 'device'"):
        ef.dc([1]).image_embedding.timm(model_name="resnet18", decode="gpu")


def test_the_gpu_decoder_waits_for_its_own_stream_only(sample_images, monkeypatch):
    """nvJPEG writes on its own stream into memory of the current stream: that stream's queued
    work must be done before the call (no block still read is written over); afterwards
    torchvision orders the current stream after its own. Never a device-wide synchronize: that
    would wait for the model's work too (issue 22)."""
    import torch
    import torchvision.io

    from embedflow_operators import _device_decode

    calls = []

    class Stream:
        def synchronize(self):
            calls.append("stream sync")

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("device-wide sync"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    real = torchvision.io.decode_jpeg

    def decode(data, **kwargs):
        calls.append(("decode", kwargs["device"]))
        return real(data, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode)
    items = [_device_decode.read_encoded(str(p)) for p in sample_images[:3]]
    out = _device_decode.decode_on(items, "cuda:0")
    assert calls == ["stream sync", ("decode", "cuda:0")]
    assert [tuple(t.shape[:1]) for t in out] == [(3,)] * 3
    calls.clear()
    _device_decode.decode_on(items, "cpu")
    assert calls == [("decode", "cpu")]
