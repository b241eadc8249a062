"""The Ray engine: the same physical plan on Ray Data, on this machine or a cluster.

Its table, stage by stage:

* the **source**: parts that can be read anywhere (Parquet row groups, ranges of text or
  JSON lines, a CSV file) become ``ray.data.read_datasource`` with one read task per part;
  the others (listings, in-memory items) are read here, in order, and handed to Ray in blocks;
* consecutive **cheap** and **pool** stages become one ``map_batches`` task (fused);
* a **model** stage becomes ``map_batches`` over an actor that builds the operator from its
  registry name and parameters and runs the model-batching routine on each block (the block
  is its sort window), with ``num_gpus`` from the stage's device;
* a **limit** is ``Dataset.limit(n)``; batch and whole-stream steps have no Ray form yet.

Output order is kept (``preserve_order``) when the plan asks for it. ``ray`` is imported only
when this engine runs: ``pip install 'embedflow[ray]'``.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from typing import Any

from ...errors import PlanError
from ...models import allowed_imports
from ...plan import CheapStage, LimitStage, ModelStage, PhysicalPlan, PoolStage, Stage
from .. import runtimes
from ..base import Engine
from ..failures import FailureLog
from ..stats import RunStats
from ..steps import Chunk, drop_bad_rows
from .codec import FAILED, RAISED, ROWS_PER_BLOCK, failure_of, marker
from .tasks import ModelActor, can_prepare_elsewhere, cheap_task, prepare_task, read_part, ship, shippable

INSTALL_HINT = "the ray engine needs Ray, which is not installed: pip install 'embedflow[ray]'"


def import_ray() -> Any:
    """``ray`` itself, or a one-line error that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise PlanError(INSTALL_HINT) from exc
    return ray


def ensure_ray(address: str | None = None, ordered: bool = True) -> Any:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), or start a local Ray, once per process."""
    ray = import_ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False}
        if address is None and os.environ.get("EMBEDFLOW_RAY_NUM_CPUS"):
            kwargs["num_cpus"] = int(os.environ["EMBEDFLOW_RAY_NUM_CPUS"])
        ray.init(address=address, **kwargs)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = ordered
    context.enable_progress_bars = False  # embedflow shows its own
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


def gpu_request(device: str, gpus_in_cluster: float, gpu_steps: int) -> float:
    """The GPUs one actor of a model step asks Ray for: 0 on the CPU; on GPUs a share, so that
    the ``gpu_steps`` model steps of a plan fit on the same GPUs side by side instead of each
    waiting for every GPU. ``cuda`` on a cluster without GPUs, or one GPU by index (Ray assigns
    GPUs itself), fail now: Ray would wait forever for the GPU.

    >>> gpu_request("auto", 2, 2), gpu_request("auto", 0, 1), gpu_request("cpu", 4, 1)
    (0.5, 0, 0)
    """
    if device.startswith("cuda:"):
        msg = f"device={device!r} names one GPU, but on Ray each actor gets the GPU Ray assigns it: use device='cuda' (or 'auto')"
        raise PlanError(msg)
    if device == "cuda" and gpus_in_cluster <= 0:
        msg = "device='cuda' but the Ray cluster has no GPU (Ray would wait for one forever); use device='cpu' or 'auto', or add GPU nodes"
        raise PlanError(msg)
    if device == "cuda" or (device == "auto" and gpus_in_cluster > 0):
        return 1 / max(1, gpu_steps)
    return 0


def prepare_in_tasks(use_gpu: bool, stage: ModelStage) -> bool:
    """Whether Ray's CPU tasks prepare a model stage's items (tokenize, decode) before its actor:
    for a GPU actor whose operator can be set up without its model (``setup_preprocess``). A
    CPU actor prepares its own: its threads share the node's cores with torch's."""
    return use_gpu and can_prepare_elsewhere(stage)


# --------------------------------------------------------------------------- the source
@functools.cache
def _parts_datasource() -> type:
    """A Ray ``Datasource`` over source parts, one read task each (defined once Ray is imported)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PartsDatasource(Datasource):
        def __init__(self, parts: list[Any], on_error: str, label: str):
            super().__init__()
            self.parts, self.on_error, self.label = parts, on_error, label

        def get_name(self) -> str:
            return "EmbedflowSource"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None) -> list[Any]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [
                ReadTask(functools.partial(read_part, part, self.on_error, self.label), meta, per_task_row_limit=per_task_row_limit)
                for part in self.parts
            ]

    return PartsDatasource


def _read_source(physical: PhysicalPlan, ray: Any, failures: FailureLog) -> Any:
    """The source as a Ray dataset of encoded rows, or None when it is empty."""
    source = physical.source
    parts = source.parts(split=True)
    if parts and all(p.portable for p in parts):
        return ray.data.read_datasource(_parts_datasource()(parts, physical.source_errors, source.kind), override_num_blocks=len(parts))
    items = []
    for part in parts:
        pairs = list(part)
        numbers: Sequence[int] = [n for n, _ in pairs]
        rows = [r for _, r in pairs]
        if part.may_fail:
            numbers, rows = drop_bad_rows(numbers, rows, physical.source_errors, source.kind, failures)
        items += [{"__row": int(n), "__payload": pickle.dumps(r, protocol=5)} for n, r in zip(numbers, rows)]
    if not items:
        return None
    return ray.data.from_items(items, override_num_blocks=max(1, min(200, -(-len(items) // ROWS_PER_BLOCK))))


# --------------------------------------------------------------------------- the engine
class RayEngine(Engine):
    """Runs a physical plan on Ray Data (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address
        import_ray()

    def run(
        self, physical: PhysicalPlan, failures: FailureLog, stats: RunStats | None = None, progress: Callable[[int], Any] | None = None
    ) -> Generator[Chunk, None, None]:
        runtimes.check(physical, "ray")
        ordered = all(s.ordered for s in physical.model_stages) if physical.model_stages else True
        ray = ensure_ray(self.address, ordered)
        ds = _read_source(physical, ray, failures)
        if ds is None:
            return
        fused: list[Stage] = []
        for stage in physical.stages:
            if isinstance(stage, (CheapStage, PoolStage)):
                fused.append(stage)
                continue
            ds = self._cheap(ds, fused, physical)
            fused = []
            if isinstance(stage, LimitStage):
                ds = ds.limit(stage.n)
            elif isinstance(stage, ModelStage):
                ds = self._model(ds, stage, physical, ray)
        ds = self._cheap(ds, fused, physical)
        try:
            yield from self._collect(ds, failures, progress)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)  # what the task raised, without Ray's wrapping
            if not isinstance(cause, Exception):
                raise
            raise cause from exc

    @staticmethod
    def _collect(ds: Any, failures: FailureLog, progress: Callable[[int], Any] | None) -> Iterator[Chunk]:
        for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
            out_numbers, out_rows = [], []
            for number, payload in zip(batch["__row"], batch["__payload"]):
                value = pickle.loads(payload)
                kind = marker(value)
                if kind == RAISED:
                    _, error, cause = value
                    raise error from cause
                if kind == FAILED:
                    failures.record(failure_of(value[1]))
                    continue
                out_numbers.append(int(number))
                out_rows.append(value)
            if out_rows:
                if progress is not None:
                    progress(len(out_rows))
                yield out_numbers, out_rows

    @staticmethod
    def _cheap(ds: Any, stages: list[Stage], physical: PhysicalPlan) -> Any:
        steps = [shippable(s) for st in stages for s in (st.steps if isinstance(st, CheapStage) else (st.step,))]  # type: ignore[union-attr]
        if not steps:
            return ds
        task = cheap_task(ship(steps), physical.key_column, allowed_imports())
        workers = [st.workers for st in stages if isinstance(st, PoolStage) and st.workers]
        limit = {"concurrency": min(workers)} if workers else {}  # workers=: at most that many tasks at once
        return ds.map_batches(task, batch_format="numpy", batch_size=ROWS_PER_BLOCK, zero_copy_batch=False, **limit)

    @staticmethod
    def _model(ds: Any, stage: ModelStage, physical: PhysicalPlan, ray: Any) -> Any:
        resources = ray.cluster_resources()
        gpus_in_cluster = resources.get("GPU", 0)
        gpu_steps = sum(1 for s in physical.model_stages if s.device in ("cuda", "auto"))
        num_gpus = gpu_request(stage.device, gpus_in_cluster, gpu_steps)
        use_gpu = num_gpus > 0
        # a CPU model actor takes all CPUs of one node but one (torch threads = its CPUs); the
        # cheap tasks beside it need at least one, or Ray could never schedule them
        node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=resources.get("CPU", 2))
        cpus = 1 if use_gpu else max(1, int(node_cpus) - 1)
        # a Ray batch is the actor's sort window: length-sorting pays only over a few thousand
        # items (4 batches of 32 texts pad ~2x more than 2,048)
        ray_batch = max(stage.window, stage.batch_size * 4)
        # one actor per GPU (as the local engine has one replica per device), one on the CPU;
        # workers= is what it is on every runtime: how many prepare the step's items at once
        concurrency = int(gpus_in_cluster) if use_gpu and gpus_in_cluster else 1
        lean = replace(stage, step=shippable(stage.step))
        device = "cuda" if use_gpu else "cpu"
        prepared = prepare_in_tasks(use_gpu, lean)
        if prepared:  # a GPU actor's one CPU would cap it (~170 images/s for timm's transform): CPU tasks prepare
            task = prepare_task(ship(lean), device, physical.key_column, allowed_imports())
            limit = {"concurrency": stage.workers} if stage.workers else {}
            ds = ds.map_batches(task, batch_format="numpy", batch_size=ROWS_PER_BLOCK, num_cpus=1, zero_copy_batch=False, **limit)
        return ds.map_batches(
            ModelActor,
            fn_constructor_kwargs={
                "stage_bytes": ship(lean),
                "device": device,
                "key_column": physical.key_column,
                "allowed": allowed_imports(),
                "prepared": prepared,
            },
            batch_format="numpy",
            batch_size=ray_batch,
            compute=ray.data.ActorPoolStrategy(size=max(1, concurrency)),
            num_gpus=num_gpus,
            num_cpus=cpus,
            zero_copy_batch=False,
        )
