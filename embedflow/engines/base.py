"""The engine interface: a plan in, an iterator of row chunks out.

>>> from embedflow.engines.base import Engine
>>> Engine.execute.__doc__.split(".")[0]
'Run plan and yield chunks ``(row numbers, rows)`` of output, in input order'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..failures import FailureLog
from ..plan import Plan
from ..scheduler import RunStats


class Engine(ABC):
    """Base of the engines; a new engine is one module with one subclass."""

    name = "base"

    @abstractmethod
    def execute(
        self,
        plan: Plan,
        failures: FailureLog,
        stats: RunStats | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> Iterator[tuple[Sequence[int], list[Any]]]:
        """Run plan and yield chunks ``(row numbers, rows)`` of output, in input order.

        A row number is the output row's source row (counted from 0).

        When ``stats`` is given it is filled with per-stage figures once the run ends.
        ``progress(n)`` is called as rows finish the run's heaviest work (the last model step,
        else the output), possibly from another thread.

        Items that fail in a step whose ``on_error`` is ``"skip"`` are recorded in ``failures``
        and left out; elsewhere a failure raises :class:`~embedflow.errors.ItemError`.
        Closing the returned iterator stops the run and releases its resources.
        """
