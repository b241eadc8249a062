"""The Ray engine: the same plan on Ray Data, on this machine or a cluster.

Lowering, node by node:

* a **file source that can be cut** (Parquet row groups, ranges of text or JSON lines: see
  ``io/parts.py``) becomes ``ray.data.read_datasource`` with one read task per part, so the
  rows are read on the workers; other sources (listings, in-memory items, CSV) are read on
  the driver, in order, and handed to Ray with ``ray.data.from_items`` in blocks. Either way
  each row travels as one pickled ``__payload`` with its source row number ``__row``, so any
  Python value (arrays, images) survives the trip unchanged and order, resume keys and
  failure records match the local engine;
* consecutive **cheap and per-item steps** (functions, filter, flat_map, select, decode) become
  one ``map_batches`` task;
* a **batchable operator** becomes ``map_batches`` over an actor class that builds the operator
  from its registry name and parameters (a model is loaded once per actor, never pickled;
  only operators registered in the driver process itself are shipped by value), with
  ``batch_size``, ``concurrency`` (``workers=``) and ``num_gpus`` from the step's device;
  inside each Ray batch, items are sorted by ``sort_key`` into model batches as locally;
* ``head(n)`` is ``Dataset.limit(n)``; output order is kept (``preserve_order``).

Failures under ``.safe()`` travel as marked rows to the driver, which records them.
``ray`` is imported only when this engine runs: ``pip install 'embedflow[ray]'``.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from ..errors import EmbedflowError, PlanError
from ..failures import Failure, FailureLog
from ..operator import Operator
from ..plan import Apply, Batch, Head, Plan, Source, Step
from ..scheduler import RunStats
from .base import Engine
from .local import is_batched
from .steps import SKIPPED, Guard, apply_items, filter_rows, flat_map_rows, project_rows

INSTALL_HINT = "the ray engine needs Ray, which is not installed: pip install 'embedflow[ray]'"
ROWS_PER_BLOCK = 64
_FAILED = "__embedflow_failure__"  # a row skipped under .safe(): (marker, failure record)
_RAISED = "__embedflow_raised__"  # a step raised: (marker, exception, its cause)


def import_ray() -> Any:
    """``ray`` itself, or a one-line error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise PlanError(INSTALL_HINT) from exc
    return ray


def ensure_ray(address: str | None = None) -> Any:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), or start a local Ray, once per process."""
    ray = import_ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False}
        if address is None and os.environ.get("EMBEDFLOW_RAY_NUM_CPUS"):
            kwargs["num_cpus"] = int(os.environ["EMBEDFLOW_RAY_NUM_CPUS"])
        ray.init(address=address, **kwargs)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # embedflow shows its own
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


# --------------------------------------------------------------------------- batch codecs
def _marker(value: Any) -> str | None:
    """``_FAILED`` or ``_RAISED`` when a payload is a marker instead of a row."""
    if isinstance(value, tuple) and value and isinstance(value[0], str) and value[0] in (_FAILED, _RAISED):
        return value[0]
    return None


def _decode(batch: dict[str, Any]) -> tuple[list[int], list[Any], list[bytes]]:
    """Rows and their numbers from a Ray batch; markers are passed through."""
    keys, rows, failures = [], [], []
    for key, payload in zip(batch["__row"], batch["__payload"]):
        value = pickle.loads(payload)
        if _marker(value):
            failures.append(payload)
            continue
        keys.append(int(key))
        rows.append(value)
    return keys, rows, failures


def _encode(keys: Sequence[int], rows: list[Any], failures: list[bytes], failed: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    payloads = [pickle.dumps(r, protocol=5) for r in rows] + failures
    payloads += [pickle.dumps((_FAILED, rec), protocol=5) for rec in failed]
    numbers = list(keys) + [-1] * (len(failures) + len(failed))
    out = np.empty(len(payloads), dtype=object)
    out[:] = payloads
    return {"__row": np.asarray(numbers, dtype=np.int64), "__payload": out}


def _carry_errors(call: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Send a step's exception to the driver as a marker row: raised in a Ray task, Ray would
    replace it with its own ("UDF failed to process a data block") and lose the row and cause."""

    @functools.wraps(call)
    def run(*args: Any) -> dict[str, Any]:
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001 - re-raised on the driver
            try:
                payload = pickle.dumps((_RAISED, exc, exc.__cause__), protocol=5)
            except Exception:  # noqa: BLE001 - an exception that does not pickle: keep its text
                payload = pickle.dumps((_RAISED, EmbedflowError(f"{type(exc).__name__}: {exc}"), None), protocol=5)
            return _encode([], [], [payload], [])

    return run


class _Collector(FailureLog):
    """A FailureLog that keeps records to send back to the driver."""

    def __init__(self) -> None:
        super().__init__(None)
        self.records: list[dict[str, Any]] = []

    def _record(self, failure: Failure) -> None:  # no logging here: the driver logs
        self.records.append(failure.__dict__.copy())

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- stages
def _cheap_stage(steps: list[Step]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    @_carry_errors
    def run(batch: dict[str, Any]) -> dict[str, Any]:
        keys, rows, passed = _decode(batch)
        log = _Collector()
        chunks: Iterator[Any] = iter([(keys, rows)])
        for step in steps:
            if isinstance(step, Apply):
                op = step.factory()
                if type(op).setup is not Operator.setup:
                    op.setup("cpu")
                chunks = apply_items(step, op, chunks, log)
            elif step.kind == "filter":
                chunks = filter_rows(step, chunks, log)  # type: ignore[arg-type]
            elif step.kind == "flat_map":
                chunks = flat_map_rows(step, chunks, log)  # type: ignore[arg-type]
            else:
                chunks = project_rows(step, chunks)  # type: ignore[arg-type]
        out_keys: list[int] = []
        out_rows: list[Any] = []
        for k, r in chunks:
            out_keys.extend(k)
            out_rows.extend(r)
        return _encode(out_keys, out_rows, passed, log.records)

    return run


class _ModelActor:
    """One replica of a batchable operator inside a Ray actor."""

    def __init__(self, spec: bytes, device: str, step_bytes: bytes):
        from ..devices import autocast, resolve_device

        factory = pickle.loads(spec)
        if device == "cpu":
            # Ray caps torch at the CPUs the actor holds (all but one, so that cheap tasks can
            # run beside it); as in the local engine, torch gets every core of the node and
            # shares them with the decode threads (measured: 1 thread halves MiniLM's speed)
            import torch

            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
        self.step: Apply = pickle.loads(step_bytes)
        self.device = resolve_device(device)
        self.op: Operator = factory()
        self.op.setup(self.device)
        self.autocast = autocast(self.device, self.step.options.dtype)

    @_carry_errors
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:

        from ..batching import cut_window
        from ..rows import read_inputs, write_outputs
        from .model_stage import _one_by_one, forward_batch

        keys, rows, passed = _decode(batch)
        log = _Collector()
        guard = Guard(self.step, self.step.name, log)
        op, step = self.op, self.step
        sort_key = getattr(op, "sort_key", None)
        prepared = []
        for seq, (key, row) in enumerate(zip(keys, rows)):
            try:
                item = op.preprocess(*read_inputs(row, step.inputs))
                prepared.append((seq, key, row, (item, sort_key(item) if sort_key else 0)))
            except Exception as exc:  # noqa: BLE001
                guard.handle(key, row, exc)
        size = step.options.batch_size or type(op).default_batch_size

        def run_batch(collated: Any, n: int) -> list[Any]:
            return forward_batch(op, step.name, collated, n, self.device, self.autocast)

        done: dict[int, Any] = {}
        key_fn = (lambda it: it[3][1]) if sort_key else None
        for group in cut_window(prepared, size, key=key_fn, max_tokens=step.options.max_batch_tokens if sort_key else None):
            try:
                results = run_batch(op.collate([it[3][0] for it in group]), len(group))
            except EmbedflowError:
                raise
            except Exception as exc:  # noqa: BLE001
                results = _one_by_one(group, exc, run_batch, op, guard)
            for (seq, _key, row, _item), result in zip(group, results):
                done[seq] = SKIPPED if result is SKIPPED else write_outputs(row, step.inputs, step.outputs, result)
        out_keys = [keys[s] for s in sorted(done) if done[s] is not SKIPPED]
        out_rows = [done[s] for s in sorted(done) if done[s] is not SKIPPED]
        return _encode(out_keys, out_rows, passed, log.records)


def _operator_spec(step: Apply) -> bytes:
    """How a worker builds the operator: from the registry by name when an installed package
    provides it (the model is loaded there, nothing heavy is pickled), else by value."""
    from .. import registry

    if step.name != "map" and registry.operator_source(step.name).startswith("package "):
        return pickle.dumps(_RegistryFactory(step.name, step.params))
    import cloudpickle

    return cloudpickle.dumps(step.factory)


class _RegistryFactory:
    def __init__(self, name: str, params: dict[str, Any]):
        self.name, self.params = name, params

    def __call__(self) -> Operator:
        from .. import registry
        from ..binding import make_factory

        return make_factory(registry.get_operator(self.name), self.params)()


def use_gpu_guess(device: str, gpus_in_cluster: float) -> bool:
    """Whether a model step's actors ask Ray for a GPU."""
    return device.startswith("cuda") or (device == "auto" and gpus_in_cluster > 0)


# --------------------------------------------------------------------------- the source
def _read_source(source: Source, ray: Any) -> Any:
    """The source as a Ray dataset of ``{__row, __payload}`` rows, or None when it is empty.

    File sources that can be cut (Parquet row groups, ranges of lines) are read by Ray tasks,
    one per part; the others (listings, in-memory items, CSV) are read here, in order.
    """
    if source.parts is not None:
        parts = list(source.parts())
        if not parts:
            return None
        return ray.data.read_datasource(_parts_datasource()(parts), override_num_blocks=len(parts))
    rows = list(source.open())
    pairs = rows if source.keyed else list(enumerate(rows))
    items = [{"__row": int(k), "__payload": pickle.dumps(r, protocol=5)} for k, r in pairs]
    if not items:
        return None
    blocks = max(1, min(200, -(-len(items) // ROWS_PER_BLOCK)))
    return ray.data.from_items(items, override_num_blocks=blocks)


def _read_part(part: Callable[[], Iterator[tuple[int, Any]]]) -> Iterator[Any]:
    """One part of a file source as Arrow blocks of encoded rows (runs in a Ray task)."""
    import pyarrow as pa

    def block(numbers: list[int], payloads: list[bytes]) -> Any:
        return pa.table({"__row": pa.array(numbers, pa.int64()), "__payload": pa.array(payloads, pa.binary())})

    numbers: list[int] = []
    payloads: list[bytes] = []
    for number, row in part():
        numbers.append(number)
        payloads.append(pickle.dumps(row, protocol=5))
        if len(numbers) == ROWS_PER_BLOCK * 4:
            yield block(numbers, payloads)
            numbers, payloads = [], []
    if numbers:
        yield block(numbers, payloads)


@functools.cache
def _parts_datasource() -> type:
    """A Ray ``Datasource`` over source parts, one read task each (defined once Ray is imported)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PartsDatasource(Datasource):
        def __init__(self, parts: list[Any]):
            super().__init__()
            self.parts = parts

        def get_name(self) -> str:
            return "EmbedflowSource"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None) -> list[Any]:
            return [
                ReadTask(functools.partial(_read_part, part), BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None), per_task_row_limit=per_task_row_limit)
                for part in self.parts
            ]

    return PartsDatasource


# --------------------------------------------------------------------------- the engine
class RayEngine(Engine):
    """Runs a plan on Ray Data (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address
        import_ray()

    def execute(self, plan: Plan, failures: FailureLog, stats: RunStats | None = None, progress: Callable[[int], Any] | None = None) -> Iterator[tuple[Sequence[int], list[Any]]]:
        for step in plan.steps:  # before Ray starts: fail fast
            if isinstance(step, Batch) or step.kind == "project":
                msg = f"{step.kind}() has no Ray Data form in embedflow yet; run this chain with set_engine('local')"
                raise PlanError(msg)
        ray = ensure_ray(self.address)
        ds = _read_source(plan.source, ray)
        if ds is None:
            return
        cheap: list[Step] = []
        for step in plan.steps:
            if isinstance(step, Head):
                ds = self._flush(ds, cheap)
                cheap = []
                ds = ds.limit(step.n)
            elif is_batched(step):
                ds = self._flush(ds, cheap)
                cheap = []
                ds = self._model(ds, step, plan, ray)  # type: ignore[arg-type]
            else:
                cheap.append(step)
        ds = self._flush(ds, cheap)
        try:
            for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
                out_keys, out_rows = [], []
                for key, payload in zip(batch["__row"], batch["__payload"]):
                    value = pickle.loads(payload)
                    marker = _marker(value)
                    if marker == _RAISED:
                        _, error, cause = value
                        raise error from cause
                    if marker == _FAILED:
                        record = value[1]
                        failures.record(Failure(record["row"], record["step"], record["error_type"], record["message"], record["item"]))
                        continue
                    out_keys.append(int(key))
                    out_rows.append(value)
                if out_rows:
                    if progress is not None:
                        progress(len(out_rows))
                    yield out_keys, out_rows
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)  # what the task raised, without Ray's wrapping
            if not isinstance(cause, Exception):
                raise
            raise cause from exc

    @staticmethod
    def _flush(ds: Any, cheap: list[Step]) -> Any:
        if not cheap:
            return ds
        # ship the steps without any model state a local run may have attached to them
        lean = [replace(s, ready={}) if isinstance(s, Apply) else s for s in cheap]
        return ds.map_batches(_cheap_stage(lean), batch_format="numpy", batch_size=ROWS_PER_BLOCK, zero_copy_batch=False)

    @staticmethod
    def _model(ds: Any, step: Apply, plan: Plan, ray: Any) -> Any:
        device = step.options.device or plan.device
        resources = ray.cluster_resources()
        gpus_in_cluster = resources.get("GPU", 0)
        # a CPU model actor takes all CPUs but one (torch threads = its CPUs); the cheap
        # tasks beside it need at least one, or Ray could never schedule them
        node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=resources.get("CPU", 2))
        cpus = 1 if use_gpu_guess(device, gpus_in_cluster) else max(1, int(node_cpus) - 1)  # one node's, not the cluster's
        use_gpu = use_gpu_guess(device, gpus_in_cluster)
        size = step.options.batch_size or type(step.operator).default_batch_size
        # a Ray batch is the actor's sort window: as in the local engine, length-sorting pays
        # only over a few thousand items (4 batches of 32 texts pad ~2x more than 2,048)
        from .model_stage import LOOKAHEAD_BATCHES, LOOKAHEAD_ITEMS

        sorts = callable(getattr(step.operator, "sort_key", None))
        ray_batch = max(size * LOOKAHEAD_BATCHES, LOOKAHEAD_ITEMS) if sorts else size * LOOKAHEAD_BATCHES
        concurrency = step.options.workers or (int(gpus_in_cluster) if use_gpu and gpus_in_cluster else 1)
        lean = Apply(
            name=step.name, operator=Operator(), factory=Operator, params={}, inputs=step.inputs,
            outputs=step.outputs, options=step.options, on_error=step.on_error,
        )
        return ds.map_batches(
            _ModelActor,
            fn_constructor_kwargs={"spec": _operator_spec(step), "device": "cuda" if use_gpu else "cpu", "step_bytes": pickle.dumps(lean)},
            batch_format="numpy",
            batch_size=ray_batch,
            compute=ray.data.ActorPoolStrategy(size=max(1, concurrency)),
            num_gpus=1 if use_gpu else 0,
            num_cpus=cpus,
            zero_copy_batch=False,
        )
