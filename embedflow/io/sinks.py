"""Sinks: they pull rows from an engine's chunks and turn them into Python, numpy or files.

>>> import embedflow as ef
>>> ef.dc([[1.0, 0.0], [0.0, 2.0]]).to_numpy().shape
(2, 2)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ColumnError, PlanError


def vector_column(named: bool, first: Any, column: str | None) -> str | None:
    """Which column ``to_numpy`` stacks: the one asked for, or the only array-valued one."""
    if not named:
        if column is not None:
            msg = f"to_numpy(column={column!r}): the rows are unnamed values; call to_numpy() without column"
            raise ColumnError(msg)
        return None
    if column is not None:
        return column
    if first is None:
        return None
    arrays = [k for k, v in first.items() if isinstance(v, np.ndarray) or type(v).__name__ == "Tensor"]
    if len(arrays) == 1:
        return arrays[0]
    msg = f"to_numpy() needs column=... when rows have several columns: choose one of {list(first)}"
    raise ColumnError(msg)


def stack(values: list[Any], what: str) -> np.ndarray:
    """Stack row values (arrays, tensors, lists, numbers) into one array with a clear error."""
    from .arrow import as_numpy

    arrays = [np.asarray(as_numpy(v)) for v in values]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        msg = (
            f"to_numpy(): {what} have different shapes {sorted(shapes)[:4]}; "
            "stacking needs one shape (use pooling, or to_list() for ragged values)"
        )
        raise PlanError(msg)
    if not arrays:
        return np.empty((0,), dtype=np.float32)
    return np.stack(arrays)


def to_numpy(chunks: Iterator[list[Any]], named: bool, column: str | None) -> np.ndarray:
    """Stack every row (or one column of named rows) into an array of shape (rows, ...)."""
    values: list[Any] = []
    chosen: str | None = None
    decided = False
    for rows in chunks:
        if not decided:
            chosen = vector_column(named, rows[0] if rows else None, column)
            decided = True
        if chosen is None:
            values.extend(rows)
        else:
            try:
                values.extend(row[chosen] for row in rows)
            except KeyError:
                msg = f"to_numpy(column={chosen!r}): no such column; the rows have {list(rows[0])}"
                raise ColumnError(msg) from None
    return stack(values, f"the values of column {chosen!r}" if chosen else "the rows")


def to_parquet(chunks: Iterator[list[Any]], named: bool, path: str | os.PathLike[str], row_group_rows: int = 4096) -> Path:
    """Write rows to ``path`` incrementally in row groups; the file appears atomically at the end."""
    from .writers import write_parquet

    def records() -> Iterator[tuple[int, str, Any]]:
        for rows in chunks:
            for row in rows:
                yield 0, "", row if named else {"value": row}

    target = Path(path)
    write_parquet(target, records(), row_group_rows)
    return target
