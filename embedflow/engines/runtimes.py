"""Which runtime runs which physical stage, in one table — the way Ray Data's planner maps each
logical operator to one physical one. Every runtime (the local engine, Ray, the server's
:class:`~embedflow.engines.chunk.ChunkRunner`) asks :func:`check` before it starts: a stage it
has no form for is one clear error naming the stage and the runtime that can run it, and a
stage no runtime knows (a new kind added to the lowering but not here) is an error too, never a
silent fall-through in a chain of ``isinstance``.

>>> import embedflow as ef
>>> from embedflow.plan import lower
>>> check(lower(ef.dc([[1, 2]]).batch(2).plan), "ray")
Traceback (most recent call last):
...
embedflow.errors.PlanError: batch() has no Ray Data form in embedflow yet; run this chain with set_engine('local')
"""

from __future__ import annotations

from ..errors import PlanError
from ..plan import Batch, CheapStage, Group, LimitStage, ModelStage, PhysicalPlan, PoolStage, Stage, WholeStage

RUNTIMES = ("local", "ray", "server")

_NO_RAY = "{kind}() has no Ray Data form in embedflow yet; run this chain with set_engine('local')"
_NO_SERVER = "a {kind} step needs the whole stream; it cannot run on rows gathered from requests"

#: stage type -> runtime -> how it runs there ("" where it cannot: see UNSUPPORTED)
STAGES: dict[type, dict[str, str]] = {
    CheapStage: {
        "local": "one thread (with the source when it comes first)",
        "ray": "map_batches tasks",
        "server": "in the batching thread",
    },
    PoolStage: {
        "local": "a pool of `workers` threads",
        "ray": "map_batches tasks",
        "server": "a pool of `workers` threads",
    },
    ModelStage: {
        "local": "threads: prepare (or `processes`), batch, forward per device replica, collect",
        "ray": "an actor per GPU (CPU tasks prepare for GPU actors)",
        "server": "the batching thread, one replica",
    },
    LimitStage: {"local": "in the stream", "ray": "Dataset.limit", "server": ""},
    WholeStage: {"local": "one thread holding every row", "ray": "", "server": ""},
}

#: why a runtime cannot run a stage (or a step inside a cheap stage), by runtime
UNSUPPORTED: dict[str, str] = {"ray": _NO_RAY, "server": _NO_SERVER}

#: steps a cheap stage may hold that a runtime cannot run (they need rows in order, whole)
_STREAM_STEPS: dict[str, tuple[type, ...]] = {"ray": (Batch, Group), "server": ()}


def check(physical: PhysicalPlan, runtime: str) -> None:
    """Raise :class:`PlanError` for the first stage ``runtime`` cannot run (see the module
    docstring); ``runtime`` is one of :data:`RUNTIMES`."""
    if runtime not in RUNTIMES:
        msg = f"runtime {runtime!r} is not one of {', '.join(map(repr, RUNTIMES))}"
        raise PlanError(msg)
    for stage in physical.stages:
        how = STAGES.get(type(stage))
        if how is None:
            msg = f"{type(stage).__name__} is a physical stage no runtime knows; add it to embedflow.engines.runtimes.STAGES"
            raise PlanError(msg)
        if not how[runtime]:
            raise PlanError(UNSUPPORTED[runtime].format(kind=_kind(stage)))
        if isinstance(stage, CheapStage):
            for step in stage.steps:
                if isinstance(step, _STREAM_STEPS.get(runtime, ())):
                    raise PlanError(UNSUPPORTED[runtime].format(kind=step.kind))


def _kind(stage: Stage) -> str:
    if isinstance(stage, WholeStage):
        return stage.step.kind
    if isinstance(stage, LimitStage):
        return "head"
    return type(stage).__name__.removesuffix("Stage").lower()
