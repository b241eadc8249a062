"""How to run a plan, as the user said it: which engine, whether to show progress, where the
failures of ``.safe()`` go. Kept apart from the :class:`~embedflow.plan.Plan` (what to compute):
nothing here is resolved or opened until a sink runs, and a sink may override the engine
(``to_list(engine="ray")``, as Polars' ``collect(engine=)``).

>>> settings = RunSettings().but(engine="ray", errors=[])
>>> settings.engine, settings.progress, settings.errors
('ray', None, [])
>>> check_error_target(42)
Traceback (most recent call last):
...
TypeError: safe(errors=42): not a place for failures: pass a list, a callable, or a file path for JSON lines
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

ErrorTarget: TypeAlias = "list[dict[str, Any]] | Callable[[dict[str, Any]], Any] | str | os.PathLike[str] | None"
"""Where ``.safe(errors=...)`` sends one record per failure: a list to append to, a callable, or
a file path that receives JSON lines (None: log and count only)."""


def check_error_target(target: Any) -> ErrorTarget:
    """``target`` if it can receive failure records, else a TypeError that says what can.

    >>> check_error_target("failed.jsonl")
    'failed.jsonl'
    """
    if target is None or isinstance(target, (list, str, os.PathLike)) or callable(target):
        return target
    msg = f"safe(errors={target!r}): not a place for failures: pass a list, a callable, or a file path for JSON lines"
    raise TypeError(msg)


@dataclass(frozen=True)
class RunSettings:
    """The run-wide choices of one collection: the engine's name (checked when set, resolved when
    a sink runs), the progress bar (None: only on a terminal, for a run longer than a second),
    the failures' target and the result store of incremental runs (``cache``).

    >>> RunSettings(progress=False).but(engine="local").progress
    False
    """

    engine: str = "local"
    progress: bool | None = None
    errors: ErrorTarget = field(default=None, compare=False)
    cache: str | None = None  # a result store: sinks compute only the rows it lacks

    def but(self, **changes: Any) -> RunSettings:
        """These settings with ``changes`` applied (a ``None`` engine keeps the current one)."""
        if changes.get("engine", self.engine) is None:
            changes.pop("engine")
        return replace(self, **changes)
