"""A batch's rows on their way through the model stage: each a :data:`Prepared` tuple, or —
when a worker process prepared and collated them — an :class:`Unprepared` group that makes no
tuple per row unless one is asked for.

>>> group = Unprepared([7, 8], ["a", "b"])
>>> numbers_of(group), rows_of([(1, "x", None, 0)])
([7, 8], ['x'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Prepared = tuple[int, Any, Any, int]  # (source row number, row, prepared item, size)


class Unprepared(Sequence[Prepared]):
    """A batch's rows whose items a worker process prepared and kept (the batch came back
    collated): each row a :data:`Prepared` with item None, made only when asked for (a retry,
    named outputs) — no tuple per row on the way to the device and back.

    >>> group = Unprepared([7, 8], ["a", "b"])
    >>> len(group), group[1], list(group[:1]), numbers_of(group)
    (2, (8, 'b', None, 0), [(7, 'a', None, 0)], [7, 8])
    """

    __slots__ = ("numbers", "rows")

    def __init__(self, numbers: list[int], rows: list[Any]):
        self.numbers, self.rows = numbers, rows

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return Unprepared(self.numbers[i], self.rows[i])
        return (self.numbers[i], self.rows[i], None, 0)


def numbers_of(group: Sequence[Prepared]) -> list[int]:
    """The source row numbers of a batch's rows."""
    return group.numbers if isinstance(group, Unprepared) else [p[0] for p in group]


def rows_of(group: Sequence[Prepared]) -> list[Any]:
    """The rows of a batch."""
    return group.rows if isinstance(group, Unprepared) else [p[1] for p in group]
