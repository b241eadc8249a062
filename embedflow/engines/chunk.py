"""A physical plan run on one chunk of rows at a time, in the calling thread: the unit of work of
a caller that gathers rows itself — the server's dynamic batches. Model stages go through the
same batching routine as every engine (:class:`~embedflow.engines.batching.ModelBatcher`:
sorted by length inside the chunk, cut by rows or tokens); per-item stages share a thread pool.

>>> import embedflow as ef
>>> from embedflow.plan import lower
>>> runner = ChunkRunner(lower(ef.dc(["a", "bb"]).map(len).plan))
>>> runner.run([0, 1], ["a", "bb"], FailureLog())
([0, 1], [1, 2])
>>> runner.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ..plan import Apply, CheapStage, ModelStage, PhysicalPlan, PoolStage, Stage
from . import runtimes
from .batching import ModelBatcher, Replica, for_device, in_parts, make_replica
from .devices import default_workers, resolve_devices
from .failures import FailureLog
from .replicas import ready
from .steps import Chunk, drop_skipped, item_applier, run_cheap


class ChunkRunner:
    """Runs ``physical``'s stages on chunks of rows; operators are built and models loaded
    when it is created (one replica per model stage, on the stage's first device)."""

    def __init__(self, physical: PhysicalPlan):
        runtimes.check(physical, "server")
        # model stages sized for their device as every runtime sizes them (256 texts on CUDA
        # unless set; a cap the server set on tokens stays)
        self.replicas: dict[int, Replica] = {}
        stages: list[Stage] = []
        for stage in physical.stages:
            if isinstance(stage, ModelStage):
                replica = self._replica(stage)
                stage = for_device(stage, replica.device)
                self.replicas[id(stage)] = replica
            stages.append(stage)
        self.physical = replace(physical, stages=tuple(stages))
        cpu_models = any(r.device == "cpu" for r in self.replicas.values())
        default = default_workers(cpu_models)
        # workers= means what it means on every runtime: the threads preparing the step's items
        self.workers = {id(s): s.workers or default for s in self.physical.stages if isinstance(s, PoolStage)}
        self.workers.update({id(s): s.workers for s in self.physical.model_stages if s.workers})
        self.pool = ThreadPoolExecutor(max([default, *self.workers.values()]), thread_name_prefix="embedflow-chunk")
        self.ops = {
            id(step): op
            for stage in physical.stages
            for step in _steps(stage)
            for _d, op in ready(step, ["cpu"])
            if not isinstance(stage, ModelStage)
        }

    @staticmethod
    def _replica(stage: ModelStage) -> Replica:
        device = resolve_devices(stage.device)[0]
        ((_d, op),) = ready(stage.step, [device])
        return make_replica(device, op, stage.dtype, device.startswith("cuda"))

    def run(self, numbers: Sequence[int], rows: list[Any], failures: FailureLog, sizes: dict[int, int] | None = None) -> Chunk:
        """The output of ``rows`` (with their source row numbers); failing rows are recorded in
        ``failures`` under their step's policy. ``sizes`` receives each row's size in the last
        model stage that sorts (its token count, for text)."""
        chunk: Chunk = (list(numbers), rows)
        for stage in self.physical.stages:
            if isinstance(stage, CheapStage):
                out_numbers: list[int] = []
                out_rows: list[Any] = []
                for n, r in run_cheap(stage.steps, self.ops, iter([chunk]), failures):
                    out_numbers.extend(n)
                    out_rows.extend(r)
                chunk = (out_numbers, out_rows)
            elif isinstance(stage, PoolStage):
                chunk = self._pool(stage, chunk, failures)
            elif isinstance(stage, ModelStage):
                replica, workers = self.replicas[id(stage)], self.workers.get(id(stage), 1)
                batcher = ModelBatcher(stage, replica.op, failures)
                chunk = batcher.process(replica, chunk[0], chunk[1], sizes if stage.sorts else None, self.pool, workers)
        return chunk

    def _pool(self, stage: PoolStage, chunk: Chunk, failures: FailureLog) -> Chunk:
        apply = item_applier(stage.step, self.ops[id(stage.step)], failures)
        numbers = list(chunk[0])
        return drop_skipped(numbers, in_parts(self.pool, self.workers[id(stage)], apply, numbers, chunk[1]))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _steps(stage: Stage) -> tuple[Apply, ...]:
    if isinstance(stage, CheapStage):
        return tuple(s for s in stage.steps if isinstance(s, Apply))
    if isinstance(stage, (PoolStage, ModelStage)):
        return (stage.step,)
    return ()
