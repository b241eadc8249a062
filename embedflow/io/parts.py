"""Source partitions: a file source cut into ranges that another process can read on its own.

The local engine reads a source as one stream. An engine that reads on several machines (Ray)
needs the file cut into ranges, each knowing the source row number of its first row, so that
row numbers — the row keys of resume and of failure records — and order stay the same as a
single stream gives. Cutting needs no pass over the data for Parquet (the row groups are in
the footer) and one counting pass for line files; no row is held on the driver.

Each part is a small picklable callable that yields ``(row number, row)`` pairs.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"; _ = p.write_text("a\\nb\\nc\\n")
>>> parts = line_parts(p, "text", target_bytes=2)
>>> [list(part()) for part in parts]
[[(0, 'a')], [(1, 'b')], [(2, 'c')]]
"""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_BYTES = 8 << 20  # a line-file part: about 8 MiB of text
TARGET_ROWS = 65536  # a Parquet part: whole row groups up to about this many rows


@dataclass(frozen=True)
class LinesPart:
    """Lines ``[start, end)`` (byte offsets at line starts) of a text or JSON-lines file."""

    path: str
    start: int
    end: int
    first_row: int  # the source row number of the first row in this part
    first_line: int  # its 1-based line number (JSON lines skip blank lines: rows != lines)
    rows: int
    kind: str  # "text" | "jsonl"
    columns: tuple[str, ...] | None = None

    def __call__(self) -> Iterator[tuple[int, Any]]:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            data = f.read(self.end - self.start)
        row = self.first_row
        if self.kind == "text":
            for line in _text_lines(data):
                text = line.rstrip("\r\n")
                yield row, {self.columns[0]: text} if self.columns else text
                row += 1
            return
        from .sources import parse_json_line

        for lineno, line in enumerate(_text_lines(data), self.first_line):
            if line.strip():
                yield row, parse_json_line(line, self.path, lineno, self.columns)
                row += 1


def _text_lines(data: bytes) -> io.TextIOWrapper:
    """Lines as ``open(path, encoding="utf-8")`` reads them (universal newlines)."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


def line_parts(path: str | os.PathLike[str], kind: str, columns: tuple[str, ...] | None = None, target_bytes: int = TARGET_BYTES) -> list[LinesPart]:
    """Cut a line file into parts of about ``target_bytes``, each ending at a line end.

    One pass counts each part's lines (and, for JSON lines, its non-blank rows).
    """
    parts: list[LinesPart] = []
    row, line, start = 0, 1, 0
    with open(path, "rb") as f:
        while True:
            data = f.read(target_bytes)
            if not data:
                break
            if not data.endswith(b"\n"):
                data += f.readline()  # finish the line: cuts fall after a newline only
            lines = rows = 0
            for text in _text_lines(data):
                lines += 1
                rows += kind == "text" or bool(text.strip())
            parts.append(LinesPart(os.fspath(path), start, start + len(data), row, line, rows, kind, columns))
            row, line, start = row + rows, line + lines, start + len(data)
    return parts


@dataclass(frozen=True)
class ParquetPart:
    """Whole row groups of a Parquet file."""

    path: str
    row_groups: tuple[int, ...]
    first_row: int
    rows: int
    columns: tuple[str, ...] | None = None

    def __call__(self) -> Iterator[tuple[int, Any]]:
        import pyarrow.parquet as pq

        from .arrow import batch_to_rows

        row = self.first_row
        batches = pq.ParquetFile(self.path).iter_batches(batch_size=1024, row_groups=list(self.row_groups), columns=list(self.columns) if self.columns else None)
        for batch in batches:
            for value in batch_to_rows(batch):
                yield row, value
                row += 1


def parquet_parts(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None, target_rows: int = TARGET_ROWS) -> list[ParquetPart]:
    """Group a Parquet file's row groups into parts of about ``target_rows`` (from the footer only)."""
    import pyarrow.parquet as pq

    from .sources import check_parquet_columns

    file = pq.ParquetFile(path)
    check_parquet_columns(file, path, columns)
    meta = file.metadata
    parts: list[ParquetPart] = []
    groups: list[int] = []
    first = rows = 0
    for index in range(meta.num_row_groups):
        groups.append(index)
        rows += meta.row_group(index).num_rows
        if rows >= target_rows or index == meta.num_row_groups - 1:
            parts.append(ParquetPart(os.fspath(path), tuple(groups), first, rows, columns))
            first, rows, groups = first + rows, 0, []
    return parts


@dataclass(frozen=True)
class ResumedPart:
    """A part without the rows an earlier run finished and the rows past ``--limit``."""

    part: LinesPart | ParquetPart
    done: tuple[tuple[int, int], ...]  # sorted, disjoint [first, last] ranges of finished row numbers
    limit: int | None = None

    @property
    def rows(self) -> int:
        return self.part.rows

    def __call__(self) -> Iterator[tuple[int, Any]]:
        starts = [a for a, _ in self.done]
        for number, row in self.part():
            if self.limit is not None and number >= self.limit:
                return
            i = bisect.bisect_right(starts, number) - 1
            if i >= 0 and number <= self.done[i][1]:
                continue
            yield number, row


def as_ranges(numbers: Sequence[int] | set[int]) -> tuple[tuple[int, int], ...]:
    """Row numbers as sorted ``(first, last)`` ranges: ``[0, 1, 2, 7]`` → ``((0, 2), (7, 7))``.

    >>> as_ranges({7, 0, 2, 1})
    ((0, 2), (7, 7))
    """
    ranges: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], n)
        else:
            ranges.append((n, n))
    return tuple(ranges)


def resumed_parts(parts: Sequence[LinesPart | ParquetPart], done: set[int], limit: int | None) -> list[ResumedPart]:
    """The parts still to read after ``done`` rows, up to ``limit`` rows from the start."""
    ranges = as_ranges(done)
    starts, ends = [a for a, _ in ranges], [b for _, b in ranges]
    kept = []
    for p in parts:
        if limit is not None and p.first_row >= limit:
            break
        # only the ranges that touch this part travel with it
        lo, hi = bisect.bisect_left(ends, p.first_row), bisect.bisect_left(starts, p.first_row + p.rows)
        kept.append(ResumedPart(p, ranges[lo:hi], limit))
    return kept


def total_rows(parts: Sequence[Any], limit: int | None = None) -> int:
    """How many source rows the parts hold (up to ``limit``)."""
    rows = sum(p.rows for p in parts)
    return rows if limit is None else min(rows, limit)


def parts_of(path: Path, kind: str, columns: tuple[str, ...] | None) -> list[LinesPart] | list[ParquetPart]:
    """The parts of a ``read_text`` / ``read_jsonl`` / ``read_parquet`` file."""
    if kind == "read_parquet":
        return parquet_parts(path, columns, TARGET_ROWS)
    return line_parts(path, "text" if kind == "read_text" else "jsonl", columns, TARGET_BYTES)
