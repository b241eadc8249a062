"""Engines run a plan and yield its output rows in chunks. ``get_engine(name)`` picks one.

>>> from embedflow.engines import get_engine
>>> type(get_engine("local")).__name__
'LocalEngine'
"""

from __future__ import annotations

from ..errors import PlanError
from .base import Engine

ENGINES = ("local", "ray")


def get_engine(name: str) -> Engine:
    """The engine called ``name``; an unknown or unavailable one raises with the fix."""
    if name == "local":
        from .local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from .ray import RayEngine

        return RayEngine()
    msg = f"engine {name!r} is not an engine: use one of {', '.join(map(repr, ENGINES))}"
    raise PlanError(msg)


__all__ = ["ENGINES", "Engine", "get_engine"]
