"""The engine interface: a physical plan in, an iterator of row chunks out.

Engines are listed in one place (:data:`embedflow.engines.ENGINES`); a new engine is one
module with one subclass of :class:`Engine` that maps each physical stage kind
(:mod:`embedflow.plan.lowering`) to its own runtime.

>>> from embedflow.engines.base import Engine
>>> Engine.run.__doc__.split(".")[0]
'Run ``physical`` and yield chunks ``(row numbers, rows)`` of output'
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from typing import Any

from ..errors import PlanError
from ..plan import PhysicalPlan
from .failures import FailureLog
from .stats import RunStats
from .steps import Chunk


class Engine(ABC):
    """Base of the engines."""

    name = "base"

    @abstractmethod
    def run(
        self,
        physical: PhysicalPlan,
        failures: FailureLog,
        stats: RunStats | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> Generator[Chunk, None, None]:
        """Run ``physical`` and yield chunks ``(row numbers, rows)`` of output.

        A row number is the output row's source row (counted from 0). Rows come in input
        order unless the plan's model stages say otherwise (``ordered=False``).

        When ``stats`` is given it is filled with per-stage figures once the run ends.
        ``progress(n)`` is called as rows finish the run's heaviest work (the last model step,
        else the output), possibly from another thread.

        Items that fail in a step whose ``on_error`` is ``"skip"`` are recorded in ``failures``
        and left out; elsewhere a failure raises :class:`~embedflow.errors.ItemError`.
        Closing the returned iterator stops the run and releases its resources.
        """


# Every engine, once: name -> "module:class", imported when first asked for (Ray only then).
ENGINES: dict[str, str] = {
    "local": "embedflow.engines.local:LocalEngine",
    "ray": "embedflow.engines.ray:RayEngine",
}


def get_engine(name: str) -> Engine:
    """The engine called ``name``; an unknown or unavailable one raises with the fix."""
    if name not in ENGINES:
        msg = f"engine {name!r} is not an engine: use one of {', '.join(map(repr, ENGINES))}"
        raise PlanError(msg)
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
