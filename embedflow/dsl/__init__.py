"""The DSL: the lazy DataCollection, the calls that start a chain, ``dc.<operator>`` dispatch
and ``["in", "out"]`` selectors. It only builds plans and hands them, with a sink, to an engine.

>>> from embedflow.dsl import DataCollection, dc
>>> isinstance(dc([1]), DataCollection)
True
"""

from __future__ import annotations

from .collection import DataCollection
from .readers import dc, glob, read_csv, read_jsonl, read_parquet, read_text

__all__ = ["DataCollection", "dc", "glob", "read_csv", "read_jsonl", "read_parquet", "read_text"]
