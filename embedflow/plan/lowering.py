"""Lowering: a logical plan becomes physical stages, once, the same for every engine.

The rules, in order (each is a small function from stages to stages, as an optimizer's):

1. **classify** each step: a batchable operator is a *model* stage; a per-item operator whose
   ``preprocess`` is real work (``threaded``, or ``workers=`` given) a *pool* stage; ``head``
   a *limit*; a whole-stream step (``project``) a *whole* stage; everything else *cheap*;
2. **resolve** a model stage's batch size (the option, else the operator's default), device
   (the step's, else the plan's), dtype, token cap and sort window;
3. **fuse** consecutive cheap steps into one stage that works chunk by chunk;
4. **order**: a model stage restores input order only when something needs it — the caller
   (``ordered=True``) or a later order-dependent stage (limit, batch, whole).

Engines map stage kinds to their own runtime through one table each (see
:mod:`embedflow.engines`). What depends on the machine — which GPU ``auto`` means, how many
threads a pool gets when ``workers`` is not given — is left to the engine.

>>> import embedflow as ef
>>> from embedflow.plan.lowering import lower
>>> dc = ef.dc["x"]([1]).map["x", "y"](abs).filter["y"](bool).image_decode["x", "img"]().select["img"]()
>>> [type(s).__name__ for s in lower(dc.plan).stages]
['CheapStage', 'PoolStage', 'CheapStage']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..hooks import SortsBySize
from ..io.sources import Source
from .nodes import Apply, Batch, Group, Head, Plan, Step, Whole, operator_class

# The sort window of operators with a sort_key: at least this many items (and 4 batches).
# Measured on 2,000 sentences with MiniLM (benchmarks/bench_text.py): a window of 4 batches
# (128 items) pads so much that it reaches ~150 sentences/s, 16 batches ~215, a 2,048-item
# window ~280 — as fast as sorting the whole input. Prepared text is a few hundred bytes an
# item, so 2,048 items stay small.
LOOKAHEAD_ITEMS = 2048
LOOKAHEAD_BATCHES = 4


@dataclass(frozen=True)
class CheapStage:
    """Consecutive cheap steps (functions, filter, flat_map, select, batch), run inline."""

    steps: tuple[Step, ...]


@dataclass(frozen=True)
class PoolStage:
    """A per-item operator whose work releases the GIL (decode), on a pool of ``workers``."""

    step: Apply
    workers: int | None  # None: the engine decides from the machine


@dataclass(frozen=True)
class ModelStage:
    """A batchable operator: prepare, sort in a window, cut, collate, forward, split."""

    step: Apply
    batch_size: int
    window: int  # items sorted together (== batch_size when the operator has no sort_key)
    sorts: bool  # the operator has a sort_key
    max_batch_tokens: int | None
    device: str  # as asked: auto | cpu | cuda | cuda:N | mps
    dtype: str | None
    workers: int | None  # preprocess threads; None: the engine decides
    processes: int | None = None  # preprocess worker processes; None: the operator's preprocess_processes
    ordered: bool = True  # rows leave in input order
    reports_progress: bool = False  # the last model stage drives the progress bar


@dataclass(frozen=True)
class LimitStage:
    """Only the first ``n`` rows (in input order)."""

    n: int


@dataclass(frozen=True)
class WholeStage:
    """A step that needs every row at once."""

    step: Whole


Stage = CheapStage | PoolStage | ModelStage | LimitStage | WholeStage


@dataclass(frozen=True)
class PhysicalPlan:
    """What an engine runs: the source, the stages, and the run-wide settings."""

    source: Source
    stages: tuple[Stage, ...]
    source_errors: str = "raise"
    key_column: str | None = None

    @property
    def model_stages(self) -> list[ModelStage]:
        return [s for s in self.stages if isinstance(s, ModelStage)]


Rule = Callable[[list[Stage], Plan], list[Stage]]


def classify(step: Step, plan: Plan) -> Stage:
    """The stage one step becomes before fusing (rules 1 and 2)."""
    if isinstance(step, Head):
        return LimitStage(step.n)
    if isinstance(step, Whole):
        return WholeStage(step)
    if not isinstance(step, Apply):
        return CheapStage((step,))
    cls = operator_class(step)
    options = step.options
    if cls.batchable:
        size = options.batch_size or cls.default_batch_size
        sorts = isinstance(cls, type) and issubclass(cls, SortsBySize)
        window = max(size * LOOKAHEAD_BATCHES, LOOKAHEAD_ITEMS) if sorts else size
        return ModelStage(
            step=step,
            batch_size=size,
            window=window,
            sorts=sorts,
            max_batch_tokens=options.max_batch_tokens if sorts else None,
            device=options.device or plan.device,
            dtype=options.dtype,
            workers=options.workers,
            processes=options.processes,
        )
    threaded = options.workers > 1 if options.workers is not None else bool(cls.threaded)
    return PoolStage(step, options.workers) if threaded else CheapStage((step,))


def fuse(stages: list[Stage], plan: Plan) -> list[Stage]:
    """Rule 3: consecutive cheap stages become one."""
    out: list[Stage] = []
    for stage in stages:
        if isinstance(stage, CheapStage) and out and isinstance(out[-1], CheapStage):
            out[-1] = CheapStage(out[-1].steps + stage.steps)
        else:
            out.append(stage)
    return out


def _needs_order(stage: Stage) -> bool:
    if isinstance(stage, (LimitStage, WholeStage)):
        return True
    return isinstance(stage, CheapStage) and any(isinstance(s, (Batch, Group)) for s in stage.steps)


def order(stages: list[Stage], ordered: bool) -> list[Stage]:
    """Rule 4: model stages keep input order when the caller or a later stage needs it."""
    out = list(stages)
    needed = ordered
    for i in range(len(out) - 1, -1, -1):
        stage = out[i]
        if isinstance(stage, ModelStage):
            out[i] = replace(stage, ordered=needed)
        needed = needed or _needs_order(stage)
    models = [i for i, s in enumerate(out) if isinstance(s, ModelStage)]
    if models:
        last = out[models[-1]]
        assert isinstance(last, ModelStage)
        out[models[-1]] = replace(last, reports_progress=True)
    return out


def lower(plan: Plan, *, ordered: bool = True, rules: Sequence[Rule] = (fuse,)) -> PhysicalPlan:
    """The physical plan of ``plan``. With ``ordered=False`` rows may leave in any order
    (each keeps its source row number), which lets finished rows reach a sink at once."""
    stages: list[Stage] = [classify(step, plan) for step in plan.steps]
    for rule in rules:
        stages = rule(stages, plan)
    stages = order(stages, ordered)
    return PhysicalPlan(plan.source, tuple(stages), plan.source_errors, plan.key_column)
