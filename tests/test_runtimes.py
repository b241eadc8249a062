"""One table of which runtime runs which physical stage (issue 23): every stage kind the
lowering makes has a row, each runtime refuses what it cannot run with one clear error, before
any work, and a stage kind no runtime knows is an error — not a silent fall-through."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest

import embedflow as ef
from embedflow.engines import runtimes
from embedflow.engines.chunk import ChunkRunner
from embedflow.engines.failures import FailureLog
from embedflow.engines.local import LocalEngine
from embedflow.plan import Stage, lower


def test_every_physical_stage_kind_has_a_row_for_every_runtime():
    assert set(runtimes.STAGES) == set(typing.get_args(Stage))
    for kind, how in runtimes.STAGES.items():
        assert set(how) == set(runtimes.RUNTIMES), kind
        assert how["local"], f"the local engine runs every stage ({kind.__name__})"


CHAINS = {
    "batch": lambda: ef.dc([1, 2, 3]).batch(2),
    "group": lambda: ef.dc(["ab"]).flat_map(list).group(reduce="list"),
    "head": lambda: ef.dc([1, 2, 3]).map(abs).head(2),
    "project": lambda: ef.dc([np.ones(3)] * 5).project(),
    "pool and model": lambda: ef.dc(["a"]).map(str.upper).text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2"),
}
REFUSED = {  # (chain, runtime): the error's words
    ("batch", "ray"): "batch() has no Ray Data form",
    ("group", "ray"): "group() has no Ray Data form",
    ("project", "ray"): "project() has no Ray Data form",
    ("head", "server"): "a head step needs the whole stream",
    ("project", "server"): "a project step needs the whole stream",
}


@pytest.mark.parametrize("runtime", runtimes.RUNTIMES)
@pytest.mark.parametrize("chain", CHAINS)
def test_each_runtime_refuses_what_it_cannot_run_and_only_that(chain, runtime):
    physical = lower(CHAINS[chain]().plan)
    refused = REFUSED.get((chain, runtime))
    if refused is None:
        runtimes.check(physical, runtime)
    else:
        with pytest.raises(ef.PlanError, match=refused.replace("(", "\\(").replace(")", "\\)")):
            runtimes.check(physical, runtime)


@dataclasses.dataclass(frozen=True)
class NewStage:
    """A stage kind the lowering might grow, that no runtime was taught."""


def test_a_stage_kind_no_runtime_knows_is_an_error_in_each_runtime():
    physical = dataclasses.replace(lower(ef.dc([1]).map(abs).plan), stages=(NewStage(),))
    for runtime in runtimes.RUNTIMES:
        with pytest.raises(ef.PlanError, match="NewStage is a physical stage no runtime knows"):
            runtimes.check(physical, runtime)
    with pytest.raises(ef.PlanError, match="NewStage is a physical stage no runtime knows"):
        list(LocalEngine().run(physical, FailureLog()))
    with pytest.raises(ef.PlanError, match="NewStage is a physical stage no runtime knows"):
        ChunkRunner(physical)


def test_the_server_runner_refuses_a_whole_stream_step_before_loading_anything():
    with pytest.raises(ef.PlanError, match="a head step needs the whole stream; it cannot run on rows gathered from requests"):
        ChunkRunner(lower(CHAINS["head"]().plan))


class Recorder(ef.Operator):
    """Per item (a pool stage) or batchable (a model stage): records the thread of each preprocess."""

    def __init__(self, batchable: bool = False):
        self.batchable = batchable
        self.threads: list[str] = []
        self.lock = __import__("threading").Lock()

    def preprocess(self, x):
        import threading
        import time

        with self.lock:
            self.threads.append(threading.current_thread().name)
        time.sleep(0.01)  # long enough that parts overlap
        return x

    def forward(self, batch):
        return batch

    def collate(self, items):
        return items


@pytest.mark.parametrize("batchable", [False, True], ids=["pool stage", "model stage"])
def test_workers_means_the_threads_preparing_a_steps_items_on_the_local_engine_and_the_server(batchable):
    """workers=3 on the same chain: the local engine and the server's runner each prepare the
    step's items in 3 threads (the server ignored workers= before issue 23)."""
    from embedflow.engines.replicas import ready

    chain = ef.dc(list(range(30))).map(Recorder(batchable), workers=3)
    assert chain.to_list() == list(range(30))
    ((_d, local_op),) = ready(chain.plan.steps[0], ["cpu"])
    assert len(set(local_op.threads)) == 3
    physical = lower(chain.plan)
    runner = ChunkRunner(physical)
    try:
        assert runner.run(list(range(30)), list(range(30)), FailureLog()) == (list(range(30)), list(range(30)))
    finally:
        runner.close()
    ((_d, served),) = ready(chain.plan.steps[0], ["cpu"])
    assert len(set(served.threads[30:])) == 3
