"""The CUDA paths' defects, exercised on the CPU with patched devices: replicas never share (or
change) the caller's module, errors of the device are fatal instead of skipping every row, an
out-of-memory batch is split in halves outside the except block, tensors are recognised by
type, dtype="auto" prefers bf16 and inf/NaN outputs are caught, forward threads bind their
device, and Ray asks for GPUs it can have."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys
import warnings

import numpy as np
import pytest
import torch

import embedflow as ef
from embedflow import Operator
from embedflow.engines import devices
from embedflow.engines.ray.engine import gpu_request
from embedflow.engines.replicas import ready


class Recorder(Operator):
    """Batchable; ``fail(batch)`` may raise; records the size of every forward call."""

    batchable = True
    default_batch_size = 8

    def __init__(self, fail=None, value=None):
        self.fail, self.value, self.calls = fail, value, []

    def collate(self, items):
        return torch.tensor(items, dtype=torch.float32)[:, None]

    def forward(self, batch):
        self.calls.append((len(batch), sys.exc_info()[0]))
        if self.fail is not None:
            self.fail(batch)
        return batch * 2 if self.value is None else torch.full_like(batch, self.value)


def test_each_replica_has_its_own_module_and_the_callers_is_untouched():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).train()
    step = ef.dc([np.ones(3)]).embedding.torch(model=net, layer=-2).plan.steps[0]
    (_, on_cpu), (_, on_meta) = ready(step, ["cpu", "meta"])
    assert on_cpu.net is not net and on_meta.net is not net and on_cpu.net is not on_meta.net
    assert next(on_meta.net.parameters()).device.type == "meta" and next(on_cpu.net.parameters()).device.type == "cpu"
    assert next(net.parameters()).device.type == "cpu" and net.training  # the caller's module: where and as it was


@pytest.mark.parametrize(
    "error",
    [
        torch.AcceleratorError("CUDA error: device-side assert triggered"),
        RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cuda:1"),
    ],
    ids=["device-side assert", "device mismatch"],
)
def test_a_device_error_is_fatal_even_under_safe(error):
    def fail(batch):
        raise error

    op = Recorder(fail)
    with pytest.raises(ef.DeviceError, match="not of one input, so no row is skipped") as info:
        ef.dc(list(range(20))).safe().map(op).to_list()
    assert info.value.__cause__ is error
    assert len(op.calls) == 1  # not retried row by row


def test_out_of_memory_splits_the_batch_in_halves_outside_the_handler():
    def fail(batch):
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    op = Recorder(fail)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ef.dc(list(range(8))).map(op, batch_size=8).to_list()
    assert [float(v) for v in out] == [2.0 * i for i in range(8)]
    assert [n for n, _ in op.calls] == [8, 4, 2, 2, 4, 2, 2]  # halves, not one by one
    assert all(active is None for _, active in op.calls)  # no retry inside an except block
    assert sum("out of memory on cpu with a batch of 8 rows; running it in halves" in str(w.message) for w in caught) == 1


def test_auto_prefers_bf16_where_the_gpu_has_it_and_bf16_without_it_fails_at_setup(monkeypatch):
    monkeypatch.setattr(devices, "bf16_supported", lambda device: True)
    assert devices.autocast("cuda:0", "auto").keywords["dtype"] == torch.bfloat16
    monkeypatch.setattr(devices, "bf16_supported", lambda device: False)
    assert devices.autocast("cuda:0", "auto").keywords["dtype"] == torch.float16
    with pytest.raises(ef.EmbedflowError, match="dtype='bf16' but cuda:0 has no bfloat16 support; use dtype='fp16' or 'fp32'"):
        devices.autocast("cuda:0", "bf16")


def test_inf_or_nan_vectors_are_never_written_silently():
    with pytest.raises(ef.ItemError, match="gave inf/NaN values; under dtype='fp16' a model trained in bf16"):
        ef.dc([1, 2]).map(Recorder(value=float("inf"))).to_list()
    failures = []
    assert ef.dc([1, 2]).safe(errors=failures).map(Recorder(value=float("nan"))).to_list() == []
    assert len(failures) == 2


def test_forward_threads_bind_their_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    devices.bind_device("cuda:1")
    devices.bind_device("cpu")
    assert calls == ["cuda:1"]
    bound = []
    monkeypatch.setattr("embedflow.engines.local.model_stage.bind_device", bound.append)
    ef.dc([1, 2, 3]).map(Recorder()).to_list()
    assert bound == ["cpu"]


def test_tensors_are_recognised_by_type_through_every_container():
    from torchvision import tv_tensors

    Pair = collections.namedtuple("Pair", "a b")

    @dataclasses.dataclass
    class Box:
        x: torch.Tensor

    batch = {"img": tv_tensors.Image(torch.zeros(3, 2, 2)), "pair": Pair(torch.ones(1), [torch.ones(2)]), "box": Box(torch.ones(1))}
    moved = devices.move(batch, "meta")
    assert moved["img"].device.type == "meta" and moved["pair"].a.device.type == "meta" and moved["pair"].b[0].device.type == "meta"
    assert isinstance(moved["pair"], Pair) and moved["box"].x.device.type == "meta"


def test_ray_asks_for_gpus_it_can_have():
    assert gpu_request("cuda", 2, 1) == 1 and gpu_request("auto", 2, 2) == 0.5  # two model steps share the GPUs
    assert gpu_request("auto", 0, 1) == 0 and gpu_request("cpu", 8, 1) == 0
    with pytest.raises(ef.PlanError, match="device='cuda' but the Ray cluster has no GPU"):
        gpu_request("cuda", 0, 1)
    with pytest.raises(ef.PlanError, match="device='cuda:1' names one GPU, but on Ray each actor gets the GPU Ray assigns it"):
        gpu_request("cuda:1", 4, 1)


def test_ray_gpu_actors_get_items_prepared_by_cpu_tasks_when_the_operator_can():
    from embedflow.engines.ray.engine import prepare_in_tasks
    from embedflow.plan import lower

    def stage(chain):
        return lower(chain.plan).model_stages[0]

    text = stage(ef.dc(["a"]).text_embedding.transformers(model_name="m"))
    image = stage(ef.dc(["a"]).image_embedding.timm(model_name="resnet18", pretrained=False))
    plain = stage(ef.dc([1]).map(Recorder(), batch_size=4))
    assert prepare_in_tasks(True, text) and prepare_in_tasks(True, image)
    assert not prepare_in_tasks(False, text)  # a CPU actor prepares its own
    assert not prepare_in_tasks(True, plain)  # no setup_preprocess: the actor prepares


def test_gpu_sized_batches_unless_the_user_set_them():
    from embedflow.engines.batching import for_device
    from embedflow.plan import lower

    def stage(**options):
        return lower(ef.dc(["a"]).text_embedding.transformers(model_name="m", **options).plan).model_stages[0]

    gpu = for_device(stage(), "cuda:0")
    assert (gpu.batch_size, gpu.max_batch_tokens) == (256, 32768) and gpu.window >= 1024
    cpu = for_device(stage(), "cpu")
    assert (cpu.batch_size, cpu.max_batch_tokens) == (32, None)
    mine = for_device(stage(batch_size=8, max_batch_tokens=999), "cuda:1")
    assert (mine.batch_size, mine.max_batch_tokens) == (8, 999)
    images = lower(ef.dc([1]).image_embedding.timm(model_name="resnet18", pretrained=False).plan).model_stages[0]
    assert (for_device(images, "cuda").batch_size, for_device(images, "cuda").max_batch_tokens) == (128, None)


def test_low_precision_weights_are_cast_once_instead_of_autocast(sample_texts, sample_images):
    import contextlib

    from embedflow.engines.batching import make_replica
    from embedflow.engines.replicas import cached

    chain = ef.dc(sample_texts[:16]).text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2", dtype="bf16", backend="torch")
    low = np.stack(chain.normalize().to_list())
    op = cached(chain.plan.steps[0])["cpu"]
    assert next(op.model.parameters()).dtype == torch.bfloat16  # the weights themselves, cast once
    assert make_replica("cpu", op, "bf16").autocast is contextlib.nullcontext  # so no autocast per batch
    full = (
        ef.dc(sample_texts[:16])
        .text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2", backend="torch")
        .normalize()
        .to_numpy()
    )
    assert low.dtype == np.float32 and float((low * full).sum(1).min()) > 0.999  # all 120 sentences: 0.99993
    images = [str(p) for p in sample_images[:4]]
    low = ef.dc(images).image_embedding.timm(model_name="efficientnet_lite0", dtype="bf16", backend="torch").normalize().to_numpy()
    full = ef.dc(images).image_embedding.timm(model_name="efficientnet_lite0", backend="torch").normalize().to_numpy()
    assert float((low * full).sum(1).min()) > 0.99  # all 36 photos: 0.9973
    assert make_replica("cpu", Recorder(), "bf16").autocast is not contextlib.nullcontext  # no cast_weights: autocast


def test_on_cuda_the_next_batch_is_launched_before_this_one_is_finished(monkeypatch):
    """The forward thread of a CUDA replica (here a CPU one under that name, with CUDA's calls
    patched) launches batch N+1 before it waits for batch N's copy back; rows stay in order,
    a failing batch is still retried item by item, and the copy back is fp32."""
    from embedflow.engines import batching
    from embedflow.engines.local import engine as local_engine
    from embedflow.engines.local import model_stage

    log = []

    class Event:
        def record(self):
            self.batch = len(log)
            log.append("launch")

        def synchronize(self):
            log.append("finish")

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(batching, "_to_device", lambda replica, collated: collated)
    monkeypatch.setattr(model_stage, "bind_device", lambda device: None)
    monkeypatch.setattr(model_stage, "pin", lambda batch: batch)

    def fail(batch):
        if 29 in batch.flatten().tolist() and len(batch) > 1:  # the batch holding 29 fails as a whole
            raise ValueError("one bad row in this batch")

    op = Recorder(fail=fail)

    def replicas(stage):
        return [batching.Replica("cuda:0", op, autocast=contextlib.nullcontext)]

    monkeypatch.setattr(local_engine.LocalEngine, "_replicas", staticmethod(replicas))
    out = ef.dc(list(range(40))).map(op, batch_size=8).to_list()
    assert [float(v) for v in out] == [2.0 * i for i in range(40)]
    first_finish = log.index("finish")
    assert log[:first_finish] == ["launch", "launch"]  # batch 2 launched before batch 1 was waited for
    assert [size for size, _ in op.calls].count(1) == 8  # the failing batch of 8, retried row by row
    assert batching._back_to_cpu(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32  # fp32 before the copy back


def test_the_finite_check_finds_one_bad_value_and_passes_huge_finite_ones():
    """The check sums first (an inf or NaN anywhere makes the sum one); a sum of finite values
    that overflows falls back to the exact check, without a numpy warning."""
    for bad in (float("nan"), float("inf"), -float("inf")):
        values = torch.zeros(256, 384)
        values[200, 17] = bad
        with pytest.raises(devices.NonFiniteOutput):
            devices.check_finite(values, "op")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        devices.check_finite(torch.full((4, 3), 3e38), "op")  # finite, though its sum is not
