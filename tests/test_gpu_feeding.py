"""Feeding the device, checked on the CPU (issue 22): images are decoded and resized in a
staging thread, not the forward thread; a staged batch reaches the compute through an event
the compute stream waits for (no ``torch.cuda.synchronize`` on the way); results own their
memory instead of viewing the pinned buffer of the copy back."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch

import embedflow as ef
from embedflow.engines import batching, transfer
from embedflow.engines.batching import ModelBatcher, Replica
from embedflow.engines.failures import FailureLog
from embedflow.plan import lower
from tests.helpers import FakeStream, FakeStreams


def test_device_decode_runs_in_the_staging_thread_not_the_forward_thread(sample_images, monkeypatch):
    from embedflow_operators._device_decode import decode_on
    from embedflow_operators.image_embedding import timm as timm_operator

    threads = []

    def recording_decode(items, device):
        threads.append(threading.current_thread().name)
        return decode_on(items, device)

    monkeypatch.setattr(timm_operator, "decode_on", recording_decode)
    paths = [str(p) for p in sample_images[:6]]
    chain = ef.dc(paths).image_embedding.timm(model_name="resnet18", pretrained=False, decode="device", backend="torch", batch_size=2)
    out = chain.to_numpy()
    assert out.shape == (6, 512) and len(threads) == 3
    assert all("-stage-" in name for name in threads), threads  # never the forward thread
    explained = chain.explain(analyze=True)
    assert "to the device [cpu]" in explained


class _Op(ef.Operator):
    """Doubles on 'the device' (recording the stream it runs on), adds one in forward."""

    batchable = True

    def __init__(self, log, streams):
        self.log, self.streams = log, streams

    def prepare_on_device(self, batch):
        self.log.append(f"prepare on {self.streams.current.name}")
        return batch * 2

    def forward(self, batch):
        self.log.append(f"forward on {self.streams.current.name}")
        return batch + 1

    def postprocess(self, output):
        return list(output.numpy())  # as timm's: views into the output


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's streams, events and synchronize, faked, for a replica on 'cuda:0'."""
    streams = FakeStreams()
    log = streams.log

    class Event:
        count = 0

        def __init__(self):
            Event.count += 1
            self.name = f"event {Event.count}"

        def record(self, stream=None):
            log.append(f"{self.name} recorded on {(stream or streams.current).name}")

        def synchronize(self):
            log.append(f"host waits for {self.name}")

    monkeypatch.setattr(torch.cuda, "stream", streams.stream)
    monkeypatch.setattr(torch.cuda, "current_stream", streams.current_stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("device-wide synchronize"))
    monkeypatch.setattr(batching, "move", lambda obj, device, non_blocking=False: obj)
    return log, streams


def test_a_staged_batch_reaches_the_compute_through_an_event_without_a_synchronize(fake_cuda):
    log, streams = fake_cuda
    op = _Op(log, streams)
    replica = Replica("cuda:0", op, contextlib.nullcontext, stage_stream=FakeStream("staging", log))
    stage = lower(ef.dc([]).map(op, batch_size=4).plan).model_stages[0]
    batcher = ModelBatcher(stage, op, FailureLog())
    group = [(i, i, i, 0) for i in range(4)]
    collated = torch.arange(4.0)
    staged = batcher.stage(replica, collated)  # the staging thread's share
    assert log == ["prepare on staging", "event 1 recorded on staging"]
    log.clear()
    rows = batcher.complete(replica, batcher.begin(replica, group, collated, staged))  # the forward thread's
    assert rows == [1.0, 3.0, 5.0, 7.0]
    assert log[:2] == ["compute waits for event 1", "forward on compute"]  # ordered on the GPU, not the host
    assert "device-wide synchronize" not in log and not any(entry.startswith("prepare") for entry in log)


def test_unstaged_batches_are_prepared_on_the_device_in_launch(fake_cuda, monkeypatch):
    """Ray and the server call forward directly: prepare_on_device runs in the launch."""
    log, streams = fake_cuda
    op = _Op(log, streams)
    replica = Replica("cuda:0", op, contextlib.nullcontext)
    monkeypatch.setattr(batching, "_to_device", lambda replica, collated: collated)
    stage = lower(ef.dc([]).map(op, batch_size=4).plan).model_stages[0]
    rows = ModelBatcher(stage, op, FailureLog()).forward(replica, [(i, i, i, 0) for i in range(2)], torch.arange(2.0))
    assert rows == [1.0, 3.0] and log[:2] == ["prepare on compute", "forward on compute"]


def test_results_own_their_memory_not_the_pinned_buffer(fake_cuda, monkeypatch):
    log, streams = fake_cuda
    op = _Op(log, streams)
    pinned = []

    def to_pinned(t):
        copy = t.float().clone()
        pinned.append(copy)
        return copy

    monkeypatch.setattr(batching, "_back_to_cpu", to_pinned)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: any(self.data_ptr() == p.data_ptr() for p in pinned))
    replica = Replica("cuda:0", op, contextlib.nullcontext, stage_stream=FakeStream("staging", log))
    stage = lower(ef.dc([]).map(op, batch_size=4).plan).model_stages[0]
    batcher = ModelBatcher(stage, op, FailureLog())
    collated = torch.ones(3, 5)
    output, event = batcher.launch(replica, collated, batcher.stage(replica, collated))
    results = batcher.finish(replica, output, event, 3)
    assert len(pinned) == 1 and output is pinned[0]
    buffer = pinned[0].numpy()
    assert not any(np.shares_memory(r, buffer) for r in results)  # a vector kept downstream holds no pinned memory
    np.testing.assert_array_equal(np.stack(results), np.full((3, 5), 3.0))


def test_owned_copies_only_pinned_tensors(monkeypatch):
    t = torch.ones(3)
    assert transfer.owned([t])[0] is t
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    copy = transfer.owned({"v": t})["v"]
    assert copy is not t and copy.data_ptr() != t.data_ptr() and torch.equal(copy, t)


@pytest.mark.parametrize(
    ("values", "travels_as"),
    [
        (torch.tensor([[101, 2023, 102], [101, 30000, 0]]), "uint16"),  # token ids: 2 bytes, not 8
        (torch.tensor([[1, 1, 1], [1, 1, 0]]), "uint8"),  # a mask: 1 byte
        (torch.zeros(2, 3, dtype=torch.int64), None),  # token types: one value, no array
        (torch.tensor([-(2**40), 2**40]), "int64"),  # nothing narrower holds it
        (torch.tensor([-3, 200], dtype=torch.int32), "int16"),
        (torch.tensor([True, False]), "bool"),
        (torch.tensor([0.5, float("nan")]), "float32"),  # floats travel as they are
        (torch.zeros(0, 4, dtype=torch.int64), "int64"),
    ],
)
def test_packed_batches_travel_small_and_come_back_exactly(values, travels_as):
    """A worker's collated tensors cross the pipe narrowed (issue 22: MiniLM's batches came to
    1,536 bytes a text through it) and come back with the same dtype, shape and values."""
    import pickle

    from embedflow.engines.packing import _Array, unpacked

    packed = _Array.of(values)
    assert (packed.array.dtype.name if packed.array is not None else None) == travels_as
    back = unpacked(pickle.loads(pickle.dumps({"x": [packed]})))["x"][0]
    assert back.dtype == values.dtype and back.shape == values.shape
    torch.testing.assert_close(back, values, rtol=0, atol=0, equal_nan=True)
    assert len(pickle.dumps(packed)) <= len(pickle.dumps(_Array(values.numpy(), values.numpy().dtype.str, tuple(values.shape))))
