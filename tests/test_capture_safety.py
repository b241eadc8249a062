"""Capture safety, on the CPU (issue 22): every forward marked ``cuda_graphs`` runs under the
dispatch mode that flags what a CUDA graph cannot record — host data lifted to a tensor, a
value read back, a data-dependent shape — and none is found; a forward where one is found is
never recorded; a recording whose ``capture_end`` fails leaves the thread on its own stream."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import embedflow as ef
from embedflow.engines import cuda_graphs
from embedflow.engines.capture_probe import capture_hazards
from embedflow.engines.cuda_graphs import GraphRunner
from embedflow.plan import instantiate
from tests.helpers import FakeStream, FakeStreams

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _operator(collection, device="cpu"):
    op = instantiate(collection.plan.steps[-1])
    op.setup(device)
    return op


@pytest.fixture(scope="module")
def minilm():
    return _operator(ef.dc([]).text_embedding.transformers(model_name=MINILM, backend="torch"))


def _padded_texts(op):
    texts = ["a short one", "a sentence that is quite a bit longer than the first of them", "mid length text here"]
    return op.collate(op.preprocess_batch([(t,) for t in texts]))


def test_probe_flags_each_kind_of_hazard():
    assert capture_hazards(lambda x: x.sum() * 2, torch.ones(4)) == []
    assert capture_hazards(lambda x: x + torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.ones(4)) == ["lift_fresh"]
    assert capture_hazards(lambda x: x * float(x.max()), torch.ones(4)) == ["item"]
    assert capture_hazards(lambda x: x if x.all() else -x, torch.ones(4)) == ["is_nonzero"]
    assert capture_hazards(lambda x: x[x > 0], torch.ones(4)) == ["index by a boolean mask"]
    assert capture_hazards(lambda x: x.nonzero(), torch.ones(4)) == ["nonzero"]


def test_text_forward_is_capture_safe_and_gives_the_usual_values(minilm):
    batch = _padded_texts(minilm)
    assert minilm.cuda_graphs and minilm.mask_4d  # MiniLM runs SDPA: its mask is passed as SDPA's own
    assert capture_hazards(minilm.forward, batch) == []
    with torch.inference_mode():
        hidden = minilm.encoder(**batch)  # the model as transformers runs it, 2-D mask and its check
        m = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * m).sum(1) / m.sum(1)
        torch.testing.assert_close(minilm.forward(batch), expected, atol=1e-5, rtol=1e-5)


def test_the_2d_mask_is_what_made_the_text_forward_read_back(minilm):
    """The hazard the 4-D mask removes is real: the same model with the 2-D mask reads a value
    back (transformers' `padding_mask.all()`), so the test above can fail."""
    minilm.mask_4d = False
    try:
        assert "is_nonzero" in capture_hazards(minilm.forward, _padded_texts(minilm))
    finally:
        minilm.mask_4d = True


def test_a_decoder_keeps_its_causal_mask(tmp_path, sample_texts):
    from tests.operators.test_text_transformers import _tiny_gpt2

    folder, _tokenizer, _model = _tiny_gpt2(tmp_path, sample_texts, "right")
    op = _operator(ef.dc([]).text_embedding.transformers(model_name=str(folder), pooling="last", backend="torch"))
    assert op.mask_4d is False  # a padding-only 4-D mask would drop causality: the setup check refuses it


def test_timm_forward_on_uint8_batches_is_capture_safe():
    op = _operator(ef.dc([]).image_embedding.timm(model_name="resnet18", pretrained=False, backend="torch", decode="cpu"))
    batch = op.collate([op.preprocess(np.full((40, 50, 3), v, np.uint8)) for v in (0, 128, 255)])
    assert op.cuda_graphs and batch.dtype == torch.uint8
    assert capture_hazards(op.forward, batch) == []


def test_timm_device_decode_pixels_are_capture_safe():
    """With decode on the device, the decoded and normalised pixels are what the graph takes."""
    from embedflow_operators._device_decode import decode_on, to_pixels

    op = _operator(ef.dc([]).image_embedding.timm(model_name="resnet18", pretrained=False, backend="torch", decode="device"))
    images = decode_on([("a", np.zeros((30, 40, 3), np.uint8)), ("b", np.full((50, 20, 3), 200, np.uint8))], "cpu")
    assert capture_hazards(lambda imgs: to_pixels(imgs, op.config, op.scale), images) == []
    pixels = to_pixels(images, op.config, op.scale)
    assert capture_hazards(op.forward, pixels) == []


def test_a_forward_that_reads_back_is_never_recorded():
    runner = GraphRunner(lambda b: b * float(b.sum()), "cuda:0", "some.op")
    runner._capture = lambda inputs: pytest.fail("a forward with a hazard was recorded")
    with pytest.warns(UserWarning, match=r"some\.op: its forward reads a value back to the CPU \(_local_scalar_dense\)"):
        out = runner(torch.ones(2, 3))
    assert torch.equal(out, torch.full((2, 3), 6.0)) and runner.off is not None


def test_a_failing_capture_end_leaves_the_thread_on_its_stream(monkeypatch):
    streams = FakeStreams()

    class FailingGraph:
        """As torch.cuda.graph: enters the recording stream and begins; here capture_end
        raises in __exit__, which then never leaves the stream context."""

        def __init__(self, graph, pool=None, stream=None, capture_error_mode=None):
            self.stream = stream

        def __enter__(self):
            streams.current = self.stream

        def __exit__(self, *exc):
            msg = "CUDA error: operation not permitted when stream is capturing"
            raise RuntimeError(msg)

    for name, value in {
        "CUDAGraph": lambda: object(),
        "Stream": lambda device=None: FakeStream("side"),
        "current_stream": streams.current_stream,
        "set_stream": streams.set_stream,
        "stream": streams.stream,
        "graph": FailingGraph,
    }.items():
        monkeypatch.setattr(torch.cuda, name, value, raising=False)
    runner = GraphRunner(lambda b: b * 2, "cuda:0", "some.op")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = runner(torch.ones(2))
    assert torch.equal(out, torch.full((2,), 2.0))
    assert streams.current is streams.default  # not left on the side stream
    assert [str(w.message) for w in caught if "recording a CUDA graph failed" in str(w.message)]
    assert cuda_graphs.MAX_GRAPHS >= 16 and runner.graphs == {}
