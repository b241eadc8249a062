"""Preparing items: an operator's ``preprocess_batch``, or ``preprocess`` item by item.

One routine for every place items are prepared — the model-batching routine's threads, a
preprocessing worker process (:mod:`.prepare_worker`), Ray's CPU tasks, a per-item step —
so they give the same items and the same errors. An error is returned as a :class:`Raised` in the item's
place, not raised: the step's policy (name or skip the row) applies where the rows are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..hooks import PreparesInBatches
from ..operator import Operator
from ..rows import read_inputs


@dataclass
class Raised:
    """In place of a prepared item: the error its ``preprocess`` raised (it may come from a
    worker process, so the step's policy is applied where the rows are)."""

    error: Exception


def input_tuples(rows: Sequence[Any], columns: tuple[str, ...] | None) -> list[tuple[Any, ...] | Raised]:
    """Each row's input tuple for ``preprocess`` (the row itself without ``columns``), or a
    :class:`Raised` for a row that lacks one of them.

    >>> [type(t).__name__ for t in input_tuples([{"a": 1}, {}], ("a",))]
    ['tuple', 'Raised']
    """
    if columns is None:  # the row itself: nothing can be missing
        return [(row,) for row in rows]
    out: list[tuple[Any, ...] | Raised] = []
    for row in rows:
        try:
            out.append(read_inputs(row, columns))
        except Exception as exc:  # noqa: BLE001 - named or skipped with the row
            out.append(Raised(exc))
    return out


def preprocess_items(op: Operator, inputs: Sequence[tuple[Any, ...] | Raised]) -> list[Any]:
    """One prepared item per input tuple, or a :class:`Raised` for one that failed (an input
    that is already a Raised stays one): ``preprocess_batch`` for all at once when the
    operator has it, else — or when it raises — ``preprocess`` item by item.

    >>> import embedflow as ef
    >>> class Upper(ef.Operator):
    ...     def preprocess(self, text):
    ...         return text.upper()
    >>> [type(it).__name__ if isinstance(it, Raised) else it for it in preprocess_items(Upper(), [("a",), (1,)])]
    ['A', 'Raised']
    """
    many = op.preprocess_batch if isinstance(op, PreparesInBatches) else None
    if many is not None and not any(isinstance(args, Raised) for args in inputs):
        try:
            items = many(list(inputs))
            if len(items) == len(inputs):
                return items
        except Exception:  # noqa: BLE001, S110 - retried item by item below, to name the bad one
            pass
    out: list[Any] = []
    for args in inputs:
        if isinstance(args, Raised):
            out.append(args)
            continue
        try:
            out.append(op.preprocess(*args))
        except Exception as exc:  # noqa: BLE001 - the step's policy decides, where the rows are
            out.append(Raised(exc))
    return out
