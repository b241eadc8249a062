"""The sink protocol: where a run's rows go. Every sink — a Python list, a numpy array, an
Arrow table, a Parquet / JSON-lines / ``.npy`` file, Milvus, a printed table — implements it,
and one routine (:func:`embedflow.engines.execute`) feeds any of them from any engine.

>>> import embedflow as ef
>>> ef.dc([[1.0, 0.0], [0.0, 2.0]]).to_numpy().shape
(2, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ColumnError, PlanError
from .arrow import as_numpy, rows_to_table

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class SinkContext:
    """What a sink knows about the rows before they come."""

    named: bool = False  # rows are dicts of named columns
    key_column: str | None = None  # the column that identifies a row (None: the row number)
    source: Any = None  # the run's source (a file sink refuses to replace one of its inputs)
    expands: bool = False  # a source row may come as several rows, in order (Plan.expands)


class Sink:
    """Base of every sink: ``open``, then ``write`` chunks, then ``close`` (or ``abort``).

    ``write`` receives the source row numbers of the rows beside them. A sink with
    ``ordered = False`` accepts rows in any order (an engine may then hand over each row as
    soon as it is finished); others receive them in input order. ``close`` makes the result
    appear — a file appears only then, complete — and returns it; ``abort`` leaves nothing
    half-written behind.
    """

    ordered = True

    def open(self, context: SinkContext) -> None:
        self.context = context

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> Any:
        return None

    def abort(self) -> None:
        """The run failed or was interrupted; by default, nothing to undo."""

    def target(self) -> Any:
        """Where the rows go (a path, a URL), for errors that do not say; None in memory."""
        return getattr(self, "path", None)


def select_columns(rows: list[Any], columns: Sequence[str] | None) -> list[Any]:
    """Only ``columns`` of each named row (all when ``columns`` is None)."""
    if not columns:
        return rows
    try:
        return [{c: row[c] for c in columns} for row in rows]
    except KeyError as exc:
        have = list(rows[0]) if rows and isinstance(rows[0], dict) else []
        msg = f"sink: no column {exc.args[0]!r} in the rows (columns: {have})"
        raise ColumnError(msg) from None


class CollectSink(Sink):
    """Every row in a list (``to_list``)."""

    def open(self, context: SinkContext) -> None:
        super().open(context)
        self.rows: list[Any] = []

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        self.rows.extend(rows)

    def close(self) -> list[Any]:
        return self.rows


def vector_column(named: bool, first: Any, column: str | None) -> str | None:
    """Which column ``to_numpy`` stacks: the one asked for, or the only array-valued one."""
    import numpy as np

    if not named:
        if column is not None:
            msg = f"to_numpy(column={column!r}): the rows are unnamed values; call to_numpy() without column"
            raise ColumnError(msg)
        return None
    if column is not None:
        return column
    if first is None:
        return None
    arrays = [k for k, v in first.items() if isinstance(as_numpy(v), np.ndarray)]
    if len(arrays) == 1:
        return arrays[0]
    msg = f"to_numpy() needs column=... when rows have several columns: choose one of {list(first)}"
    raise ColumnError(msg)


def stack(values: list[Any], what: str) -> np.ndarray:
    """Stack row values (arrays, tensors, lists, numbers) into one array with a clear error."""
    import numpy as np

    arrays = [np.asarray(as_numpy(v)) for v in values]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        msg = f"to_numpy(): {what} have different shapes {sorted(shapes)[:4]}; stacking needs one shape (use pooling, or to_list() for ragged values)"
        raise PlanError(msg)
    if not arrays:
        return np.empty((0,), dtype=np.float32)
    return np.stack(arrays)


class NumpySink(Sink):
    """The rows, or one column of named rows, stacked into one array (``to_numpy``)."""

    def __init__(self, column: str | None = None):
        self.column = column

    def open(self, context: SinkContext) -> None:
        super().open(context)
        self.values: list[Any] = []
        self.chosen: str | None = None
        self.decided = False

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        if not rows:
            return
        if not self.decided:
            self.chosen = vector_column(self.context.named, rows[0], self.column)
            self.decided = True
        if self.chosen is None:
            self.values.extend(rows)
            return
        try:
            self.values.extend(row[self.chosen] for row in rows)
        except KeyError:
            msg = f"to_numpy(column={self.chosen!r}): no such column; the rows have {list(rows[0])}"
            raise ColumnError(msg) from None

    def close(self) -> np.ndarray:
        if not self.decided:
            vector_column(self.context.named, None, self.column)  # still refuse column= on unnamed rows
        return stack(self.values, f"the values of column {self.chosen!r}" if self.chosen else "the rows")


class ArrowSink(Sink):
    """A ``pyarrow.Table`` (``to_arrow``); unnamed rows become one column called ``value``."""

    def open(self, context: SinkContext) -> None:
        super().open(context)
        self.tables: list[Any] = []

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        if rows:
            self.tables.append(rows_to_table(rows, self.context.named))

    def close(self) -> Any:
        import pyarrow as pa

        if not self.tables:
            return pa.table({})
        return pa.concat_tables(self.tables, promote_options="permissive")
