"""Cutting a window of items into batches: by rows, and by padded tokens when items are sorted
by size (the model-batching routine's ``cut`` phase, also run in preprocessing worker processes).

>>> items = [(i, n) for i, n in enumerate([5, 1, 4, 2])]  # (position, size)
>>> [[p for p, _ in b] for b in cut_window(items, batch_size=2, key=lambda it: it[1])]
[[1, 3], [2, 0]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def cut_window(
    items: list[T], batch_size: int, key: Callable[[T], int] | None = None, max_tokens: int | None = None, width: Callable[[int], int] | None = None
) -> list[list[T]]:
    """Batches for one window: sorted by ``key`` when given, at most ``batch_size`` items each
    and, with ``max_tokens``, at most that many padded tokens (``len(batch) * max(key)``, or
    ``len(batch) * width(max(key))`` when the batch is padded to a bucketed ``width``) — a
    batch always holds at least one item.

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
        if width is not None:
            size = width(size)
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
