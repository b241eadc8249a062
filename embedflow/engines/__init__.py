"""Engines run a physical plan and yield its output rows in chunks; :func:`execute` drives any
plan on its engine into any sink, :func:`stream` yields the chunks themselves.

Every engine is listed here, once; the CLI's ``--engine`` choices come from this table.

>>> from embedflow.engines import get_engine
>>> type(get_engine("local")).__name__
'LocalEngine'
"""

from __future__ import annotations

from .base import ENGINES, Engine, get_engine
from .failures import FailureLog
from .physical import describe as describe_physical
from .run import execute, stream
from .stats import RunStats

__all__ = ["ENGINES", "Engine", "FailureLog", "RunStats", "describe_physical", "execute", "get_engine", "stream"]
