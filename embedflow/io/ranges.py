"""Resume and limits as a filter on parts: the rows an earlier run finished are skipped where
they are read, by any engine, and a ``--limit`` stops reading early.

>>> from embedflow.io.readers import ItemsPart
>>> f = RowFilter(as_ranges({0, 1, 3}), limit=5)
>>> [pair for part in f.apply([ItemsPart("abcdefg", None)]) for pair in part]
[(2, 'c'), (4, 'e')]
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .readers import Chunk, Part

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint [first, last] ranges of row numbers


def as_ranges(numbers: Iterable[int]) -> Ranges:
    """Row numbers as sorted ``(first, last)`` ranges: ``[0, 1, 2, 7]`` → ``((0, 2), (7, 7))``.

    >>> as_ranges({7, 0, 2, 1})
    ((0, 2), (7, 7))
    """
    ranges: list[tuple[int, int]] = []
    for n in sorted(set(numbers)):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], n)
        else:
            ranges.append((n, n))
    return tuple(ranges)


def count(ranges: Ranges) -> int:
    """How many row numbers the ranges hold."""
    return sum(last - first + 1 for first, last in ranges)


@dataclass(frozen=True)
class FilteredPart(Part):
    """A part without the rows in ``done`` and the rows from ``limit`` on."""

    part: Part
    done: Ranges
    limit: int | None = None

    @property
    def first_row(self) -> int:  # type: ignore[override]
        return self.part.first_row

    @property
    def rows(self) -> int | None:  # type: ignore[override]
        return self.part.rows

    @property
    def portable(self) -> bool:  # type: ignore[override]
        return self.part.portable

    @property
    def may_fail(self) -> bool:  # type: ignore[override]
        return self.part.may_fail

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        starts = [a for a, _ in self.done]
        for number, row in self.part:
            if self.limit is not None and number >= self.limit:
                return
            i = bisect.bisect_right(starts, number) - 1
            if i >= 0 and number <= self.done[i][1]:
                continue
            yield number, row

    def read(self) -> Iterator[Any]:  # pragma: no cover - rows are not contiguous: use iteration
        return (row for _number, row in self)

    def chunks(self, sizes: Iterator[int]) -> Generator[Chunk, None, None]:
        pairs = iter(self)
        for size in sizes:
            got = list(itertools.islice(pairs, size))
            if not got:
                return
            yield [n for n, _ in got], [r for _, r in got]


@dataclass(frozen=True)
class RowFilter:
    """Which source rows to leave out: those already ``done`` and those from ``limit`` on."""

    done: Ranges = ()
    limit: int | None = None

    def rows_left(self, total: int | None) -> int | None:
        """How many of ``total`` source rows are still to read (at most ``limit``).

        >>> RowFilter(done=((0, 9),), limit=40).rows_left(3590)
        30
        """
        if self.limit is not None:
            total = self.limit if total is None else min(total, self.limit)
        if total is None:
            return None
        done = sum(min(last, total - 1) - first + 1 for first, last in self.done if first < total)
        return max(total - done, 0)

    def apply(self, parts: Sequence[Part]) -> list[Part]:
        """The parts still to read; each carries only the finished ranges that touch it."""
        if not self.done and self.limit is None:
            return list(parts)
        starts, ends = [a for a, _ in self.done], [b for _, b in self.done]
        kept: list[Part] = []
        for p in parts:
            if self.limit is not None and p.first_row >= self.limit:
                break
            if p.rows is None:  # unknown size: it needs every range from its first row on
                lo, hi = bisect.bisect_left(ends, p.first_row), len(self.done)
            else:
                lo, hi = bisect.bisect_left(ends, p.first_row), bisect.bisect_left(starts, p.first_row + p.rows)
            if p.rows is not None and hi - lo == 1 and self.done[lo][0] <= p.first_row and self.done[lo][1] >= p.first_row + p.rows - 1:
                continue  # every row of this part is done
            kept.append(FilteredPart(p, self.done[lo:hi], self.limit))
        return kept
