"""Source nodes: lazy readers that yield one row per item, opened anew for every run.

Unnamed rows are plain values; named rows are dicts (column -> value).

>>> from embedflow.io.sources import from_iterable
>>> src = from_iterable([1, 2], columns=("n",))
>>> list(src.open())
[{'n': 1}, {'n': 2}]
"""

from __future__ import annotations

import csv
import glob as _glob
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ColumnError, EmbedflowError
from ..plan import Source
from .parts import parts_of


def _name_rows(values: Iterable[Any], columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
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


def _label_of(iterable: Any) -> str:
    try:
        return f"{type(iterable).__name__} of {len(iterable)}"
    except TypeError:
        return type(iterable).__name__


def from_iterable(iterable: Iterable[Any], columns: tuple[str, ...] | None = None) -> Source:
    """A source over any iterable; a one-shot iterator (a generator) can be run only once."""
    if columns:
        return Source("dc", f"dc({_label_of(iterable)})", lambda: _name_rows(iterable, columns), True, columns)
    return Source("dc", f"dc({_label_of(iterable)})", lambda: iter(iterable))


def _glob_paths(patterns: tuple[str, ...]) -> Iterator[str]:
    found: set[str] = set()
    for pattern in patterns:
        found.update(p for p in _glob.glob(os.path.expanduser(str(pattern)), recursive=True) if os.path.isfile(p))
    if not found:
        warnings.warn(
            f"glob{patterns!r} matched no file (relative to {os.getcwd()}); check the pattern",
            stacklevel=2,
        )
    yield from sorted(found)


def from_glob(patterns: tuple[str, ...], columns: tuple[str, ...] | None = None) -> Source:
    """File paths matching any of ``patterns`` (``**`` recursive), sorted, directories left out."""
    if not patterns:
        msg = "glob() needs at least one pattern, e.g. ef.glob('photos/*.jpg')"
        raise EmbedflowError(msg)
    pats = tuple(str(p) for p in patterns)
    label = f"glob({', '.join(repr(p) for p in pats)})"
    spec = {"glob": pats[0] if len(pats) == 1 else list(pats)}
    if columns:
        if len(columns) != 1:
            msg = f"glob names one column (the path), got {list(columns)}: use ef.glob['path'](...)"
            raise ColumnError(msg)
        return Source("glob", label, lambda: _name_rows(_glob_paths(pats), columns), True, columns, {**spec, "column": columns[0]})
    return Source("glob", label, lambda: _glob_paths(pats), spec=spec)


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\r\n")


def from_text(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
    """One row per line of a UTF-8 text file (line endings removed, blank lines kept)."""
    p = Path(path)
    label = f"read_text({str(p)!r})"
    if columns:
        spec = {"read_text": str(p), "column": columns[0]}
        return Source("read_text", label, lambda: _name_rows(_lines(p), columns[:1]), True, columns[:1], spec, parts=lambda: parts_of(p, "read_text", columns[:1]))
    return Source("read_text", label, lambda: _lines(p), spec={"read_text": str(p)}, parts=lambda: parts_of(p, "read_text", None))


def _jsonl(path: Path, columns: tuple[str, ...] | None) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield parse_json_line(line, path, lineno, columns)


def parse_json_line(line: str, path: str | os.PathLike[str], lineno: int, columns: tuple[str, ...] | None) -> dict[str, Any]:
    """One row of a JSON-lines file, or an error naming ``path:lineno``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        msg = f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object"
        raise EmbedflowError(msg) from exc
    if not isinstance(row, dict):
        msg = f"{path}:{lineno}: a JSON {type(row).__name__}, not an object; each line must be one JSON object"
        raise EmbedflowError(msg)
    return _pick(row, columns, f"{path}:{lineno}")


def _pick(row: dict[str, Any], columns: tuple[str, ...] | None, where: str) -> dict[str, Any]:
    if not columns:
        return row
    missing = [c for c in columns if c not in row]
    if missing:
        msg = f"{where}: no column {missing[0]!r}; the row has {sorted(row)}"
        raise ColumnError(msg)
    return {c: row[c] for c in columns}


def from_jsonl(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
    """Rows of a JSON-lines file (one object per line); ``columns`` keeps only those keys."""
    p = Path(path)
    spec = {"read_jsonl": str(p), **({"columns": list(columns)} if columns else {})}
    return Source("read_jsonl", f"read_jsonl({str(p)!r})", lambda: _jsonl(p, columns), True, columns, spec, parts=lambda: parts_of(p, "read_jsonl", columns))


def _csv(path: Path, columns: tuple[str, ...] | None) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.DictReader(f), 2):
            yield _pick(row, columns, f"{path}:{lineno}")


def from_csv(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
    """Rows of a CSV file with a header line; values are strings."""
    p = Path(path)
    spec = {"read_csv": str(p), **({"columns": list(columns)} if columns else {})}
    return Source("read_csv", f"read_csv({str(p)!r})", lambda: _csv(p, columns), True, columns, spec)


def _parquet(path: Path, columns: tuple[str, ...] | None) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    from .arrow import batch_to_rows

    pf = pq.ParquetFile(path)
    check_parquet_columns(pf, path, columns)
    for batch in pf.iter_batches(batch_size=1024, columns=list(columns) if columns else None):
        yield from batch_to_rows(batch)


def check_parquet_columns(file: Any, path: str | os.PathLike[str], columns: tuple[str, ...] | None) -> None:
    """Fail with the file's column names when a wanted column is not in ``file`` (a ParquetFile)."""
    names = file.schema_arrow.names
    missing = [c for c in columns or () if c not in names]
    if missing:
        msg = f"{path}: no column {missing[0]!r}; the file has {names}"
        raise ColumnError(msg)


def from_parquet(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
    """Rows of a Parquet file, read in record batches; vector columns come back as numpy arrays."""
    p = Path(path)
    spec = {"read_parquet": str(p), **({"columns": list(columns)} if columns else {})}
    return Source("read_parquet", f"read_parquet({str(p)!r})", lambda: _parquet(p, columns), True, columns, spec, parts=lambda: parts_of(p, "read_parquet", columns))
