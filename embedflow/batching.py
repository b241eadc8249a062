"""Cutting prepared items into batches, and putting results back in input order.

Length-aware batching sorts items by ``sort_key`` inside a bounded look-ahead window (a few
batches), so batches pad little without reading the whole input first; the
:class:`Reorder` buffer then restores input order.

>>> items = [(i, n) for i, n in enumerate([5, 1, 4, 2])]  # (position, size)
>>> [[p for p, _ in b] for b in cut_window(items, batch_size=2, key=lambda it: it[1])]
[[1, 3], [2, 0]]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def cut_window(
    items: list[T],
    batch_size: int,
    key: Callable[[T], int] | None = None,
    max_tokens: int | None = None,
) -> list[list[T]]:
    """Batches for one look-ahead window: sorted by ``key`` when given, at most ``batch_size``
    items each and, with ``max_tokens``, at most that many padded tokens
    (``len(batch) * max(key)``) — a batch always holds at least one item.

    >>> cut_window([3, 1, 2], batch_size=2)
    [[3, 1], [2]]
    >>> cut_window([9, 1, 1, 1], batch_size=4, key=lambda n: n, max_tokens=9)
    [[1, 1, 1], [9]]
    """
    ordered = sorted(items, key=key) if key is not None else list(items)
    batches: list[list[T]] = []
    current: list[T] = []
    longest = 0
    for item in ordered:
        size = key(item) if (key is not None and max_tokens is not None) else 0
        widest = max(longest, size)
        too_many = len(current) >= batch_size
        too_wide = max_tokens is not None and current and widest * (len(current) + 1) > max_tokens
        if current and (too_many or too_wide):
            batches.append(current)
            current, widest = [], size
        current.append(item)
        longest = widest
    if current:
        batches.append(current)
    return batches


class Reorder:
    """Holds results that arrive out of order and releases them in sequence.

    >>> r = Reorder()
    >>> r.add(1, "b"), r.add(0, "a"), r.add(2, "c")
    ([], ['a', 'b'], ['c'])
    """

    def __init__(self, start: int = 0):
        self.next = start
        self.pending: dict[int, Any] = {}

    def add(self, seq: int, value: Any) -> list[Any]:
        """Store ``value`` at position ``seq``; return every value now due, in order."""
        self.pending[seq] = value
        return self.release()

    def add_many(self, pairs: Iterable[tuple[int, Any]]) -> list[Any]:
        for seq, value in pairs:
            self.pending[seq] = value
        return self.release()

    def release(self) -> list[Any]:
        out = []
        while self.next in self.pending:
            out.append(self.pending.pop(self.next))
            self.next += 1
        return out

    def __len__(self) -> int:
        return len(self.pending)
