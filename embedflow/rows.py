"""Reading a step's inputs from a row and writing its outputs back, in both row modes.

Unnamed rows are single values; named rows are dicts and are copied, never changed in place.

>>> from embedflow.rows import read_inputs, write_outputs
>>> row = {"text": "hi"}
>>> read_inputs(row, ("text",))
('hi',)
>>> write_outputs(row, ("text",), ("n",), 2)
{'text': 'hi', 'n': 2}
"""

from __future__ import annotations

from typing import Any

from .errors import ColumnError, did_you_mean


def read_inputs(row: Any, inputs: tuple[str, ...] | None) -> tuple[Any, ...]:
    """The positional arguments for a step: the row itself, or the selected columns."""
    if inputs is None:
        return (row,)
    try:
        return tuple(row[c] for c in inputs)
    except KeyError as exc:
        raise missing_column(exc.args[0], row) from None
    except TypeError:
        msg = f"selectors {list(inputs)} need named rows (dicts), got {type(row).__name__}"
        raise ColumnError(msg) from None


def missing_column(column: str, row: Any) -> ColumnError:
    """The error for a selector naming a column the row lacks."""
    have = list(row) if isinstance(row, dict) else []
    msg = f"no column {column!r} in the row.{did_you_mean(column, have)} Columns: {have}"
    return ColumnError(msg)


def write_outputs(row: Any, inputs: tuple[str, ...] | None, outputs: tuple[str, ...] | None, result: Any) -> Any:
    """The new row after a step returned ``result``."""
    if inputs is None:
        return result
    targets = outputs or inputs
    new = dict(row)
    if len(targets) == 1:
        new[targets[0]] = result
        return new
    values = tuple(result) if isinstance(result, (tuple, list)) else None
    if values is None or len(values) != len(targets):
        got = f"{len(values)} values" if values is not None else type(result).__name__
        msg = f"the step must return {len(targets)} values for the outputs {list(targets)}, got {got}"
        raise ColumnError(msg)
    new.update(zip(targets, values))
    return new
