"""Readers: one per format. Each reads one *part* of a source and knows the source row number
of its first row, so that row numbers — the keys of resume and of failure records — and order
are the same whether one thread reads every part in turn or many processes read them at once.

A part yields rows; a row it cannot read (a line that is not UTF-8, a JSON line that does not
parse) comes out as a :class:`BadRow` in its place, for the engine to record or raise under the
plan's error policy, so one bad line never costs the rest of the file.

Line files are read as bytes and decoded line by line (universal newlines, as ``open`` reads
text), which makes them cuttable at any line end: ``line_parts`` cuts a file into ranges of
about 8 MiB with one counting pass; Parquet parts are whole row groups, found in the footer.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"; _ = p.write_text("a\\nb\\nc\\n")
>>> parts = line_parts(p, "text", target_bytes=2)
>>> [list(part) for part in parts]
[[(0, 'a')], [(1, 'b')], [(2, 'c')]]
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ColumnError, EmbedflowError
from .arrow import batch_to_rows
from .remote import is_remote, local_path, open_input

TARGET_BYTES = 8 << 20  # a line-file part: about 8 MiB of text
TARGET_ROWS = 65536  # a Parquet part: whole row groups up to about this many rows
BLOCK = 1 << 20  # bytes read at a time

Chunk = tuple[Sequence[int], list[Any]]


class BadRow:
    """A source row that could not be read; ``error`` says where (file:line) and why."""

    __slots__ = ("error", "raw")

    def __init__(self, error: EmbedflowError, raw: Any = None):
        self.error = error
        self.raw = raw

    def __reduce__(self) -> tuple[Any, ...]:
        return (BadRow, (self.error, self.raw))

    def __repr__(self) -> str:
        return f"BadRow({self.error})"


class Part:
    """A piece of a source that can be read on its own, in any process when ``portable``.

    Every part has ``first_row`` (the source row number of its first row) and ``rows`` (how
    many rows it holds, or None when that is not known without reading it).
    """

    first_row: int
    rows: int | None
    portable = True  # picklable and readable in another process
    may_fail = False  # may yield BadRow

    def read(self) -> Iterator[Any]:
        """The rows, from ``first_row`` on, contiguous."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """``(row number, row)`` pairs."""
        return enumerate(self.read(), self.first_row)

    def chunks(self, sizes: Iterator[int]) -> Generator[Chunk, None, None]:
        """The rows in chunks ``(row numbers, rows)`` of the sizes ``sizes`` gives."""
        rows = self.read()
        start = self.first_row
        try:
            for size in sizes:
                got = list(itertools.islice(rows, size))
                if not got:
                    return
                yield range(start, start + len(got)), got
                start += len(got)
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()


# --------------------------------------------------------------------------- in memory
def name_rows(values: Iterable[Any], columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Values as named rows: one column wraps each value; several unpack tuples or dicts."""
    if len(columns) == 1:
        (col,) = columns
        for value in values:
            yield {col: value}
        return
    for i, value in enumerate(values):
        if isinstance(value, dict):
            missing = [c for c in columns if c not in value]
            if missing:
                msg = f"item {i} has no key {missing[0]!r} (keys: {sorted(value)}); selectors were {list(columns)}"
                raise ColumnError(msg)
            yield {c: value[c] for c in columns}
            continue
        values_t = tuple(value)
        if len(values_t) != len(columns):
            msg = f"item {i} has {len(values_t)} values but {len(columns)} columns were named ({list(columns)})"
            raise ColumnError(msg)
        yield dict(zip(columns, values_t))


class ItemsPart(Part):
    """The items of an in-memory iterable (``ef.dc``); read where the driver is."""

    portable = False

    def __init__(self, items: Iterable[Any], columns: tuple[str, ...] | None):
        self.items, self.columns = items, columns
        self.first_row, self.rows = 0, None

    def read(self) -> Iterator[Any]:
        return name_rows(self.items, self.columns) if self.columns else iter(self.items)


class GlobPart(Part):
    """The files matching some patterns, sorted, each real file once."""

    portable = False

    def __init__(self, paths: Sequence[str], columns: tuple[str, ...] | None):
        self.paths, self.columns = paths, columns
        self.first_row, self.rows = 0, len(paths)

    def read(self) -> Iterator[Any]:
        return name_rows(self.paths, self.columns) if self.columns else iter(self.paths)


# --------------------------------------------------------------------------- line files
def byte_lines(path: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The lines of bytes ``[start, end)`` of a file, without their ends; ``\\n``, ``\\r\\n``
    and ``\\r`` all end a line (universal newlines), streaming in blocks."""
    with open_input(path) as f:
        f.seek(start)
        left = None if end is None else end - start
        carry: list[bytes] = []  # the unfinished line, in blocks: joined once it ends (a 200 MB line is not copied per block)
        while left is None or left > 0:
            block = f.read(BLOCK if left is None else min(BLOCK, left))
            if not block:
                break
            if left is not None:
                left -= len(block)
            if b"\n" not in block and b"\r" not in block:
                carry.append(block)
                continue
            lines = b"".join([*carry, block]).splitlines(keepends=True)
            carry = [lines.pop()] if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")) else []
            for line in lines:
                yield line.rstrip(b"\r\n")
        if carry:
            yield b"".join(carry).rstrip(b"\r\n")


def _jsonl_row(raw: bytes) -> bool:
    """Whether a line of a JSON-lines file holds a row (blank lines are skipped)."""
    try:
        return bool(raw.decode("utf-8").strip())
    except UnicodeDecodeError:
        return True  # a row, and a bad one


def decode_line(raw: bytes, path: str, lineno: int) -> str | BadRow:
    """A line as text, or a BadRow naming ``path:lineno`` when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{path}:{lineno}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}); fix the file's encoding, e.g. iconv -f latin1 -t utf-8"
        return BadRow(EmbedflowError(msg), raw[:80])


def parse_json_line(line: str, path: str | os.PathLike[str], lineno: int, columns: tuple[str, ...] | None) -> dict[str, Any] | BadRow:
    """One row of a JSON-lines file, or a BadRow naming ``path:lineno``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        msg = f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object"
        return BadRow(EmbedflowError(msg), line[:80])
    if not isinstance(row, dict):
        msg = f"{path}:{lineno}: a JSON {type(row).__name__}, not an object; each line must be one JSON object"
        return BadRow(EmbedflowError(msg), line[:80])
    return pick(row, columns, f"{path}:{lineno}")


def pick(row: dict[str, Any], columns: tuple[str, ...] | None, where: str) -> dict[str, Any] | BadRow:
    """The wanted columns of a file row, or a BadRow saying which one is missing."""
    if not columns:
        return row
    missing = [c for c in columns if c not in row]
    if missing:
        msg = f"{where}: no column {missing[0]!r}; the row has {sorted(row)}"
        return BadRow(ColumnError(msg), row)
    return {c: row[c] for c in columns}


@dataclass(frozen=True)
class LinesPart(Part):
    """Lines ``[start, end)`` (byte offsets at line starts; ``end=None``: to the end) of a
    text or JSON-lines file."""

    path: str
    start: int
    end: int | None
    first_row: int  # the source row number of the first row in this part
    first_line: int  # its 1-based line number (JSON lines skip blank lines: rows != lines)
    rows: int | None
    kind: str  # "text" | "jsonl"
    columns: tuple[str, ...] | None = None
    may_fail = True

    def read(self) -> Iterator[Any]:
        lines = enumerate(byte_lines(self.path, self.start, self.end), self.first_line)
        if self.kind == "text":
            column = self.columns[0] if self.columns else None
            for lineno, raw in lines:
                text = decode_line(raw, self.path, lineno)
                yield {column: text} if column is not None and not isinstance(text, BadRow) else text
            return
        for lineno, raw in lines:
            if _jsonl_row(raw):
                text = decode_line(raw, self.path, lineno)
                yield text if isinstance(text, BadRow) else parse_json_line(text, self.path, lineno, self.columns)


def line_parts(path: str | os.PathLike[str], kind: str, columns: tuple[str, ...] | None = None, target_bytes: int = TARGET_BYTES) -> list[LinesPart]:
    """Cut a line file into parts of about ``target_bytes``, each ending at a line end.

    One pass counts each part's lines (and, for JSON lines, its non-blank rows).
    """
    parts: list[LinesPart] = []
    row, line, start = 0, 1, 0
    with open_input(path) as f:
        while True:
            data = f.read(target_bytes)
            if not data:
                break
            if not data.endswith(b"\n"):
                data += f.readline()  # finish the line: cuts fall after a newline only
            lines = data.splitlines()
            rows = len(lines) if kind == "text" else sum(map(_jsonl_row, lines))
            parts.append(LinesPart(os.fspath(path), start, start + len(data), row, line, rows, kind, columns))
            row, line, start = row + rows, line + len(lines), start + len(data)
    return parts


# --------------------------------------------------------------------------- CSV
@dataclass(frozen=True)
class CsvPart(Part):
    """A whole CSV file with a header line (quoted fields may span lines: it is not cut)."""

    path: str
    columns: tuple[str, ...] | None = None
    first_row = 0
    rows = None
    may_fail = True

    def read(self) -> Iterator[Any]:
        with open_input(self.path) as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                where = f"{self.path}:{reader.line_num}"
                if not all(v.isascii() for v in row.values() if isinstance(v, str)) and _has_bad_bytes(row):
                    msg = f"{where}: not valid UTF-8; fix the file's encoding, e.g. iconv -f latin1 -t utf-8"
                    yield BadRow(EmbedflowError(msg))
                    continue
                yield pick(row, self.columns, where)


def _has_bad_bytes(row: dict[str, Any]) -> bool:
    for value in row.values():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


# --------------------------------------------------------------------------- Parquet
def check_parquet_columns(file: Any, path: str | os.PathLike[str], columns: tuple[str, ...] | None) -> None:
    """Fail with the file's column names when a wanted column is not in ``file`` (a ParquetFile)."""
    names = file.schema_arrow.names
    missing = [c for c in columns or () if c not in names]
    if missing:
        msg = f"{path}: no column {missing[0]!r}; the file has {names}"
        raise ColumnError(msg)


@dataclass(frozen=True)
class ParquetPart(Part):
    """Whole row groups of a Parquet file (``row_groups=None``: all of them)."""

    path: str
    row_groups: tuple[int, ...] | None
    first_row: int
    rows: int | None
    columns: tuple[str, ...] | None = None

    def read(self) -> Iterator[Any]:
        import pyarrow.parquet as pq

        file = pq.ParquetFile(open_input(self.path) if is_remote(self.path) else local_path(self.path))
        check_parquet_columns(file, self.path, self.columns)
        groups = list(self.row_groups) if self.row_groups is not None else None
        for batch in file.iter_batches(batch_size=1024, row_groups=groups, columns=list(self.columns) if self.columns else None):
            yield from batch_to_rows(batch)


def parquet_parts(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None, target_rows: int = TARGET_ROWS) -> list[ParquetPart]:
    """Group a Parquet file's row groups into parts of about ``target_rows`` (from the footer only)."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(open_input(path) if is_remote(path) else local_path(path))
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
