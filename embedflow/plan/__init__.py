"""The plan layer: logical nodes (what the user said), binding (names and parameters checked),
and lowering (the physical stages every engine runs).

>>> from embedflow.plan import Plan, lower
>>> callable(lower) and Plan.__name__
'Plan'
"""

from __future__ import annotations

from .binding import bind_operator, instantiate, signature_text
from .lowering import CheapStage, LimitStage, ModelStage, PhysicalPlan, PoolStage, Stage, WholeStage, lower
from .nodes import (
    EXECUTION_OPTIONS,
    REDUCERS,
    Apply,
    Batch,
    ExecOptions,
    Filter,
    FlatMap,
    Group,
    Head,
    Plan,
    Project,
    Step,
    Whole,
    check_device,
    operator_class,
)
from .settings import ErrorTarget, RunSettings, check_error_target

__all__ = [
    "EXECUTION_OPTIONS",
    "Apply",
    "Batch",
    "REDUCERS",
    "CheapStage",
    "ErrorTarget",
    "ExecOptions",
    "Filter",
    "FlatMap",
    "Group",
    "Head",
    "LimitStage",
    "ModelStage",
    "PhysicalPlan",
    "Plan",
    "PoolStage",
    "RunSettings",
    "Project",
    "Stage",
    "Step",
    "Whole",
    "WholeStage",
    "bind_operator",
    "check_device",
    "check_error_target",
    "instantiate",
    "lower",
    "operator_class",
    "signature_text",
]
