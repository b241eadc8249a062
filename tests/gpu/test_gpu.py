"""On a CUDA GPU (skipped elsewhere, with the reason; CI has none): CPU and GPU give the same
vectors for text (fp16 and bf16) and images (decoded on the device), an out-of-memory batch is
split and finishes, and each GPU gets its own replica."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import embedflow as ef
from embedflow.engines.replicas import ready

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "auto"])
def test_text_on_the_gpu_equals_the_cpu(sample_texts, dtype):
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    cpu = ef.dc(sample_texts).text_embedding.transformers(model_name=MINILM, device="cpu", backend="torch").normalize().to_numpy()
    gpu = ef.dc(sample_texts).text_embedding.transformers(model_name=MINILM, device="cuda", dtype=dtype).normalize().to_numpy()
    assert float((cpu * gpu).sum(1).min()) > 0.999


def test_images_decoded_on_the_gpu_equal_the_cpu_path(sample_images):
    paths = [str(p) for p in sample_images]
    cpu = ef.dc(paths).image_embedding.timm(model_name="efficientnet_lite0", device="cpu", decode="cpu").normalize().to_numpy()
    gpu = (
        ef.dc(paths).image_embedding.timm(model_name="efficientnet_lite0", device="cuda", dtype="fp32").normalize().to_numpy()
    )  # decode="auto": on the GPU
    assert float((cpu * gpu).sum(1).min()) > 0.999


def test_an_out_of_memory_batch_is_split_and_finishes():
    class Hungry(ef.Operator):
        batchable = True

        def collate(self, items):
            return torch.tensor(items, dtype=torch.float32)[:, None]

        def forward(self, batch):
            if len(batch) > 4:  # a real allocation the GPU cannot give
                torch.empty(1 << 50, dtype=torch.uint8, device=batch.device)
            return batch * 2

    with pytest.warns(UserWarning, match="out of memory"):
        out = ef.dc(list(range(16))).map(Hungry(), batch_size=16, device="cuda").to_list()
    assert [float(v) for v in out] == [2.0 * i for i in range(16)]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_each_gpu_has_its_own_replica():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    step = ef.dc([np.ones(3)]).embedding.torch(model=net, layer=-2).plan.steps[0]
    replicas = ready(step, ["cuda:0", "cuda:1"])
    assert [next(op.net.parameters()).device for _, op in replicas] == [torch.device("cuda:0"), torch.device("cuda:1")]
    assert next(net.parameters()).device.type == "cpu"
