"""The execution options mean on every runtime what the README's table says (issue 23): the same
chain with ``workers=2``, ``batch_size=4`` and ``processes=1`` on the local engine, the server's
runner and Ray gives the same rows in input order, and its rows show how they were made — the
thread and process that prepared each item, the rows in the forward it went through."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

import embedflow as ef
from embedflow.engines import describe_physical, prepare_processes
from embedflow.engines.chunk import ChunkRunner
from embedflow.engines.failures import FailureLog
from embedflow.plan import lower

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
RUNTIMES = ["local", "server", pytest.param("ray", marks=pytest.mark.slow)]


class Witness(ef.Operator):
    """A model step whose rows say how they were made: (item, preparing thread, preparing
    process, rows in its forward)."""

    batchable = True

    def preprocess(self, x):
        time.sleep(0.002)  # long enough that the two preparers overlap
        return x, threading.current_thread().name, os.getpid()

    def collate(self, items):
        return items

    def forward(self, batch):
        return [(x, thread, pid, len(batch)) for x, thread, pid in batch]

    def postprocess(self, output):
        return output


def run_on(runtime: str, chain, items: list) -> list:
    """``chain`` (whose source is ``items``) run on ``runtime``; the server's runner gets the
    items as the rows of one shared batch, as requests hand them over."""
    if runtime == "local":
        return chain.to_list()
    if runtime == "ray":
        import ray

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors need Witness
        return chain.to_list(engine="ray")
    runner = ChunkRunner(lower(chain.plan))
    try:
        numbers, rows = runner.run(list(range(len(items))), list(items), FailureLog())
    finally:
        runner.close()
    assert numbers == list(range(len(items)))
    return rows


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_workers_and_batch_size_mean_the_same_on_every_runtime(runtime):
    items = list(range(40))
    rows = run_on(runtime, ef.dc(items).map(Witness(), workers=2, batch_size=4), items)
    assert [r[0] for r in rows] == items
    sizes = [r[3] for r in rows]
    assert max(sizes) == 4, sizes  # batch_size=: the rows per forward
    assert len({r[1] for r in rows}) == 2  # workers=: two prepare the items at once
    in_this_process = {r[2] for r in rows} == {os.getpid()}
    assert in_this_process == (runtime != "ray")  # Ray prepares in its actor


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_processes_prepare_in_worker_processes_locally_only(runtime, sample_texts, monkeypatch):
    """processes=1: one worker process tokenizes for the local engine; Ray prepares in its own
    tasks and actors and the server in its batching threads, with the same vectors."""
    started = []

    class Counted(prepare_processes.PreparePool):
        def __init__(self, *args, **kwargs):
            started.append(args)
            super().__init__(*args, **kwargs)

    texts = sample_texts[:24]
    reference = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", processes=0).to_numpy()
    monkeypatch.setattr(prepare_processes, "PreparePool", Counted)
    chain = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1, workers=2, batch_size=4)
    vectors = np.stack(run_on(runtime, chain, texts))
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    assert len(started) == (1 if runtime == "local" else 0)
    if runtime == "local":
        assert started[0][2] == 1  # one process, as asked


def test_explain_says_what_each_engine_does_with_processes():
    chain = ef.dc(["a"]).text_embedding.transformers(model_name=MINILM, backend="torch", processes=1, workers=2, batch_size=4)
    local = "\n".join(describe_physical(chain.plan, "local"))
    on_ray = "\n".join(describe_physical(chain.plan, "ray"))
    assert "processes=1, workers=2" in local
    assert "processes=0 (ray: its CPU tasks prepare for a GPU actor, a CPU actor in workers= threads), workers=2" in on_ray
    assert "batch_size=4," in local and "batch_size=4," in on_ray


def test_device_dependent_choices_come_from_the_engine(sample_texts, monkeypatch):
    """The engine decides what depends on the device (hooks.Placement) and hands it to the
    operator before setup: on this CPU, shapes as they come and torch's threads; told to use
    fixed shapes (as it does on CUDA), the text operator pads to width buckets — same vectors."""
    import torch

    from embedflow.engines import devices, replicas
    from embedflow.hooks import Placement

    texts = sample_texts[:16]
    chain = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", batch_size=8)
    plain = chain.to_numpy()
    ((_device, op),) = replicas.ready(chain.plan.steps[0], ["cpu"])
    assert op.placement == Placement("cpu", threads=torch.get_num_threads(), fixed_shapes=False)
    assert not op.tokens.bucketed

    monkeypatch.setattr(devices, "placement", lambda device: Placement(device, threads=1, fixed_shapes=True))
    monkeypatch.setattr(replicas, "placement", devices.placement)
    fixed = ef.dc(texts).text_embedding.transformers(model_name=MINILM, backend="torch", batch_size=8)
    np.testing.assert_allclose(fixed.to_numpy(), plain, atol=1e-5)
    ((_device, op),) = replicas.ready(fixed.plan.steps[0], ["cpu"])
    assert op.placement.fixed_shapes and op.tokens.bucketed
    assert op.tokens.padded(5) == 16  # padded to the first bucket
