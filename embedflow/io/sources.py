"""Sources: where rows come from. Each lists its parts (see :mod:`.readers`), anew for every run.

An engine that reads in one place asks for the source whole (``parts()``: one part per file,
no pass over the data first); an engine that reads in many processes asks for it cut
(``parts(split=True)``: line files in ranges, Parquet in row groups). A resumed run filters
the parts (``with_filter``), the same for every engine.

Unnamed rows are plain values; named rows are dicts (column -> value).

>>> src = from_iterable([1, 2], columns=("n",))
>>> [list(part) for part in src.parts()]
[[(0, {'n': 1}), (1, {'n': 2})]]
"""

from __future__ import annotations

import glob as _glob
import hashlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ColumnError, EmbedflowError, user_stacklevel
from .ranges import RowFilter
from .readers import CsvPart, GlobPart, ItemsPart, LinesPart, ParquetPart, Part, line_parts, parquet_parts
from .remote import glob as remote_glob
from .remote import info as remote_info
from .remote import is_remote, local_path

COUNT_LINES_UP_TO = 256 << 20  # bytes of a text file whose lines are counted for a progress total


@dataclass(frozen=True)
class Source:
    """Base of every source: how it reads (``parts``), how it looks (``label``, ``spec``)."""

    kind: str
    label: str
    named: bool = False
    columns: tuple[str, ...] | None = None  # known column names in named mode, else None
    spec: dict[str, Any] | None = field(default=None, compare=False)  # its YAML form, if any
    key_column: str | None = None  # the column that identifies a row by default (glob: the path)
    row_filter: RowFilter | None = None  # rows to leave out (a resumed run, --limit)
    allow_empty: bool = False  # an input without rows is fine (else a pipeline run refuses it)

    def describe(self) -> str:
        cols = f" -> {', '.join(self.columns)}" if self.named and self.columns else ""
        return f"{self.label}{cols}"

    def parts(self, split: bool = False) -> list[Part]:
        """The parts to read, in order; ``split`` cuts files for reading in parallel."""
        parts = self._parts(split)
        return self.row_filter.apply(parts) if self.row_filter is not None else parts

    def _parts(self, split: bool) -> list[Part]:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def with_filter(self, row_filter: RowFilter | None) -> Source:
        """The same source, leaving out the rows ``row_filter`` names."""
        return replace(self, row_filter=row_filter)

    def size_hint(self) -> int | None:
        """How many rows the source holds, when known without reading it (or from one cheap
        pass: the lines of a local text file)."""
        return None

    def rows_to_read(self) -> int | None:
        """How many rows a run of this source reads: the size less the rows a resumed run
        already has, at most ``--limit``; None when unknown."""
        total = self.size_hint()
        return self.row_filter.rows_left(total) if self.row_filter is not None else total

    def identity(self) -> dict[str, Any]:
        """What identifies the input's content, to tell a changed input from an unchanged one
        (a resumed run must read the same rows): see each source."""
        return {}

    def check(self) -> None:
        """Fail now, naming the input and the fix, when the input cannot be read or holds
        nothing (unless ``allow_empty``); checked before any work and by ``validate``."""


@dataclass(frozen=True, kw_only=True)
class ItemsSource(Source):
    """An in-memory iterable; a one-shot iterator (a generator) can be read only once."""

    items: Any = field(compare=False, repr=False)
    _used: list[bool] = field(default_factory=list, compare=False, repr=False)

    def _parts(self, split: bool) -> list[Part]:
        if iter(self.items) is self.items:  # an iterator: reading it uses it up
            if self._used:
                msg = (
                    f"{self.label}: the source is a one-shot iterator ({type(self.items).__name__}) that an earlier "
                    "run used up; pass a list (ef.dc(list(items))) to run the collection more than once"
                )
                raise EmbedflowError(msg)
            self._used.append(True)
        return [ItemsPart(self.items, self.columns)]

    def size_hint(self) -> int | None:
        try:
            return len(self.items)
        except TypeError:
            return None

    def identity(self) -> dict[str, Any]:
        """A hash of the items' text, for the lists a pipeline file writes (``items:``)."""
        if not isinstance(self.items, (list, tuple)):
            return {}
        return {"items": hashlib.sha256(repr(self.items).encode()).hexdigest()[:16]}


@dataclass(frozen=True, kw_only=True)
class GlobSource(Source):
    """File paths matching any of ``patterns`` (``**`` recursive), sorted, each real file once."""

    patterns: tuple[str, ...]

    def _parts(self, split: bool) -> list[Part]:
        return [GlobPart(list_files(self.patterns, warn=not self.allow_empty), self.columns)]

    def check(self) -> None:
        if not self.allow_empty and not list_files(self.patterns, warn=False):
            shown = ", ".join(map(repr, self.patterns))
            msg = f"glob {shown} matched no file (relative to {os.getcwd()}); check the pattern, or add allow_empty: true to the source if an empty input is fine"
            raise EmbedflowError(msg)

    def identity(self) -> dict[str, Any]:
        """The listing: every file's path, size and modification time (a file's contents are
        read by the steps, not by this source)."""
        digest = hashlib.sha256()
        paths = list_files(self.patterns, warn=False)
        versions = {
            url: f"{entry.get('size')}\0{entry.get('ETag') or entry.get('mtime') or entry.get('LastModified')}"
            for pattern in self.patterns
            if is_remote(pattern)
            for url, entry in remote_glob(pattern)
        }
        for p in paths:
            if p in versions:
                digest.update(f"{p}\0{versions[p]}\n".encode())
                continue
            st = os.stat(p) if os.path.exists(p) else None
            digest.update(f"{p}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\n".encode())
        return {"files": len(paths), "listing": digest.hexdigest()[:16]}


def list_files(patterns: tuple[str, ...], warn: bool = True) -> list[str]:
    """The sorted files matching ``patterns``. A file reached twice (through a symlinked
    folder, or by two patterns) is listed once; a dangling symlink is listed (reading it then
    fails and is recorded or raised) rather than dropped silently."""
    found: dict[str, str] = {}
    for pattern in patterns:
        if is_remote(pattern):
            found.update((url, url) for url, _info in remote_glob(str(pattern)))
            continue
        for p in _glob.glob(os.path.expanduser(local_path(pattern)), recursive=True):
            if os.path.isfile(p) or (os.path.islink(p) and not os.path.exists(p)):
                found.setdefault(p, os.path.realpath(p))
    seen: set[str] = set()
    paths = []
    for p in sorted(found):
        if found[p] not in seen:
            seen.add(found[p])
            paths.append(p)
    if not paths and warn:
        warnings.warn(f"glob{patterns!r} matched no file (relative to {os.getcwd()}); check the pattern", stacklevel=user_stacklevel())
    return paths


@dataclass(frozen=True, kw_only=True)
class FileSource(Source):
    """A text, JSON-lines, CSV or Parquet file."""

    path: str
    format: str  # text | jsonl | csv | parquet

    def check(self) -> None:
        path = self.path
        if is_remote(path):
            self._check_remote()
            return
        if not os.path.exists(path):
            msg = f"{self.kind}: input file {path!r} does not exist (relative to {os.getcwd()}); check the path"
            raise EmbedflowError(msg)
        if not os.path.isfile(path):
            msg = f"{self.kind}: input {path!r} is not a file; name a file"
            raise EmbedflowError(msg)
        if not os.access(path, os.R_OK):
            msg = f"{self.kind}: input file {path!r} is not readable (permissions); fix them or copy the file"
            raise EmbedflowError(msg)
        if os.path.getsize(path) == 0 and not self.allow_empty:
            msg = f"{self.kind}: input file {path!r} is empty; add allow_empty: true to the source if an empty input is fine"
            raise EmbedflowError(msg)

    def _check_remote(self) -> None:
        try:
            found = remote_info(self.path)
        except FileNotFoundError as exc:
            msg = f"{self.kind}: input {self.path!r} does not exist; check the URL"
            raise EmbedflowError(msg) from exc
        except IsADirectoryError as exc:
            msg = f"{self.kind}: input {self.path!r} is a folder; name a file"
            raise EmbedflowError(msg) from exc
        if found["size"] == 0 and not self.allow_empty:
            msg = f"{self.kind}: input file {self.path!r} is empty; add allow_empty: true to the source if an empty input is fine"
            raise EmbedflowError(msg)

    def _parts(self, split: bool) -> list[Part]:
        path, columns = self.path, self.columns
        if is_remote(path):
            self._check_remote()
        elif not os.path.exists(path):
            msg = f"{self.kind}: input file {path!r} does not exist (relative to {os.getcwd()})"
            raise EmbedflowError(msg)
        if self.format in ("text", "jsonl"):
            if split:
                return list(line_parts(path, self.format, columns))
            return [LinesPart(path, 0, None, 0, 1, None, self.format, columns)]
        if self.format == "parquet":
            if split:
                return list(parquet_parts(path, columns))
            return [ParquetPart(path, None, 0, None, columns)]
        return [CsvPart(path, columns)]

    def size_hint(self) -> int | None:
        """The rows of a local text or JSON-lines file (one pass over its lines, about a
        second per GB, for files up to 256 MB) or a Parquet file (its footer); None for CSV and
        remote files."""
        if is_remote(self.path) or not os.path.isfile(self.path):
            return None
        if self.format in ("text", "jsonl") and os.path.getsize(self.path) <= COUNT_LINES_UP_TO:
            return sum(p.rows or 0 for p in line_parts(self.path, self.format, self.columns))
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows)
        return None

    def identity(self) -> dict[str, Any]:
        """The file's size, modification time and a hash of its contents (a remote file: its
        size and version — ETag or modification time — without downloading it)."""
        if is_remote(self.path):
            try:
                return {"url": self.path, **remote_info(self.path)}
            except (FileNotFoundError, IsADirectoryError):
                return {"url": self.path}
        if not os.path.exists(self.path):
            return {"path": self.path}
        st = os.stat(self.path)
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"path": os.path.abspath(self.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()[:16]}


# --------------------------------------------------------------------------- constructors
def _label_of(iterable: Any) -> str:
    try:
        return f"{type(iterable).__name__} of {len(iterable)}"
    except TypeError:
        return type(iterable).__name__


def from_iterable(iterable: Iterable[Any], columns: tuple[str, ...] | None = None) -> Source:
    """A source over any iterable; a one-shot iterator (a generator) can be run only once."""
    return ItemsSource(kind="dc", label=f"dc({_label_of(iterable)})", named=bool(columns), columns=columns or None, items=iterable)


def from_glob(patterns: tuple[str, ...], columns: tuple[str, ...] | None = None) -> Source:
    """File paths matching any of ``patterns`` (``**`` recursive), sorted, directories left out."""
    if not patterns:
        msg = "glob() needs at least one pattern, e.g. ef.glob('photos/*.jpg')"
        raise EmbedflowError(msg)
    pats = tuple(str(p) for p in patterns)
    label = f"glob({', '.join(repr(p) for p in pats)})"
    spec: dict[str, Any] = {"glob": pats[0] if len(pats) == 1 else list(pats)}
    if columns and len(columns) != 1:
        msg = f"glob names one column (the path), got {list(columns)}: use ef.glob['path'](...)"
        raise ColumnError(msg)
    if columns:
        spec["column"] = columns[0]
    return GlobSource(
        kind="glob", label=label, named=bool(columns), columns=columns or None, spec=spec, key_column=columns[0] if columns else None, patterns=pats
    )


_FORMATS = {"read_text": "text", "read_jsonl": "jsonl", "read_csv": "csv", "read_parquet": "parquet"}


def from_file(kind: str, path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
    """A ``read_text`` / ``read_jsonl`` / ``read_csv`` / ``read_parquet`` source.

    ``read_text`` has one column (``columns[0]``, when named); the other formats are always
    named and ``columns`` keeps only those keys.
    """
    p = os.fspath(path) if is_remote(path) else str(Path(local_path(path)))
    fmt = _FORMATS[kind]
    if fmt == "text":
        columns = columns[:1] if columns else None
        spec: dict[str, Any] = {kind: p, **({"column": columns[0]} if columns else {})}
        named = bool(columns)
    else:
        spec = {kind: p, **({"columns": list(columns)} if columns else {})}
        named = True
    return FileSource(kind=kind, label=f"{kind}({p!r})", named=named, columns=columns or None, spec=spec, path=p, format=fmt)


def from_text(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
    """One row per line of a UTF-8 text file (line endings removed, blank lines kept)."""
    return from_file("read_text", path, columns)


def from_jsonl(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
    """Rows of a JSON-lines file (one object per line); ``columns`` keeps only those keys."""
    return from_file("read_jsonl", path, columns)


def from_csv(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
    """Rows of a CSV file with a header line; values are strings."""
    return from_file("read_csv", path, columns)


def from_parquet(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
    """Rows of a Parquet file, read in record batches; vector columns come back as numpy arrays."""
    return from_file("read_parquet", path, columns)
