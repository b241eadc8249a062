"""The physical plan as ``explain()`` prints it: the stages a plan lowers to, with every
execution option resolved for this machine and, where embedflow chose a value, why — the way
Polars prints the optimized plan under the logical one. Nothing runs and no model loads: the
devices are resolved, the operator is built (its ``__init__``, never ``setup``) only to read
how many worker processes it asks for.

>>> import embedflow as ef
>>> print("\\n".join(describe(ef.dc(["a"]).map(str.upper).plan)))
physical plan (local engine)
  cheap   map  (1 thread, with the source)
"""

from __future__ import annotations

from typing import Any

from ..plan import CheapStage, LimitStage, ModelStage, Plan, PoolStage, instantiate, lower
from .batching import for_device
from .devices import default_workers, precision, resolve_devices
from .prepare_processes import process_count, rebuilt_by_name
from .replicas import cached


def describe(plan: Plan, engine: str = "local") -> list[str]:
    """One line per physical stage as ``engine`` runs them, options resolved (see the module
    docstring)."""
    physical = lower(plan)
    devices = {id(s): resolve_devices(s.device) for s in physical.model_stages}
    cpu_models = any(d == "cpu" for found in devices.values() for d in found)
    threads = default_workers(cpu_models)
    lines = [f"physical plan ({engine} engine)"]
    for i, stage in enumerate(physical.stages):
        with_source = " with the source" if i == 0 else ""
        if isinstance(stage, CheapStage):
            lines.append(f"  cheap   {' > '.join(s.label for s in stage.steps)}  (1 thread,{with_source})".replace(",)", ")"))
        elif isinstance(stage, PoolStage):
            workers = f"workers={stage.workers}" if stage.workers else f"workers={threads} (auto: {_why_threads(cpu_models)})"
            lines.append(f"  pool    {stage.step.label}  ({workers})")
        elif isinstance(stage, ModelStage):
            options = model_options(stage, devices[id(stage)], threads, cpu_models, engine)
            lines.append(f"  model   {stage.step.label}  ({', '.join(options)})")
        elif isinstance(stage, LimitStage):
            lines.append(f"  limit   {stage.n}")
        else:
            lines.append(f"  whole   {stage.step.label}  (every row at once)")
    return lines


def model_options(stage: ModelStage, devices: list[str], threads: int, cpu_models: bool, engine: str = "local") -> list[str]:
    """A model stage's options as ``engine`` will run them, each with its reason when chosen."""
    device = devices[0]
    sized = for_device(stage, device)
    options = stage.step.options
    out = [f"device={','.join(devices)}" + _why_device(stage.device or "auto", device)]
    dtype = precision(device, stage.dtype)
    out.append(f"dtype={dtype}" + ("" if stage.dtype not in (None, "auto") else f" (auto: {device.split(':')[0]})"))
    out.append(_chosen("batch_size", sized.batch_size, options.batch_size, stage.batch_size, device))
    if stage.sorts:
        out.append(_chosen("max_batch_tokens", sized.max_batch_tokens, options.max_batch_tokens, stage.max_batch_tokens, device))
        out.append(f"sorted in windows of {sized.window}")
    wanted = stage.processes if stage.processes is not None else _operator_processes(stage)
    processes = process_count(wanted, device) if rebuilt_by_name(stage.step) or stage.processes is not None else 0
    if processes and engine == "ray":  # the README's table: processes= is the local engine's
        processes = 0
        out.append("processes=0 (ray: its CPU tasks prepare for a GPU actor, a CPU actor in workers= threads)")
    elif processes:
        out.append(f"processes={processes}" + ("" if stage.processes is not None else f" (auto: {device.split(':')[0]}, cores)"))
    workers = stage.workers or (processes or threads)
    out.append(f"workers={workers}" + ("" if stage.workers else f" (auto: {'one per process' if processes else _why_threads(cpu_models)})"))
    out.append("in order" if stage.ordered else "as finished")
    return out


def _chosen(name: str, value: Any, given: Any, default: Any, device: str) -> str:
    if given is not None:
        return f"{name}={value}"
    if value != default:
        return f"{name}={value} (auto: {device.split(':')[0]})"
    return f"{name}={value} (operator default)" if value is not None else f"{name}=None"


def _why_device(asked: str, device: str) -> str:
    if asked == "auto":
        return " (auto: every visible GPU)" if device.startswith("cuda") else f" (auto: {'no GPU here' if device == 'cpu' else device})"
    return " (every visible GPU)" if asked == "cuda" else ""


def _why_threads(cpu_models: bool) -> str:
    return "cores left beside torch's threads" if cpu_models else "cores"


def _operator_processes(stage: ModelStage) -> Any:
    """What the step's operator asks for (``preprocess_processes``): from a replica already
    built, else from a fresh one (its ``__init__`` only)."""
    built = cached(stage.step)
    op = next(iter(built.values())) if built else None
    if op is None:
        try:
            op = instantiate(stage.step)
        except Exception:  # noqa: BLE001 - explain never fails on an operator's constructor
            return None
    return getattr(op, "preprocess_processes", None)
