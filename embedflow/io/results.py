"""The result store of incremental runs: each finished source row's output rows, kept under its
content key (:mod:`.content` for the row, :mod:`embedflow.plan.fingerprint` for the chain).

A folder (by default ``.<output>.cache/`` beside the output)::

    store.json               {"format": 1}
    files.json               each hashed file's size, modification time, inode and digest
    segments/<id>.arrow      Arrow IPC: __content, __part, then the output columns
    segments/<id>.json       the segment's row count and SHA-256, written after it
    refs/<output id>.json    the content keys an output's last complete run used

A segment counts once its ``.json`` exists: written under a temporary name and renamed, as
the segment was, so at any instant a segment either counts whole or not at all — a ``kill -9``
loses at most the rows not yet committed. Writers never rewrite a shared file, so two runs
writing to one store (two outputs, one ``--cache``) cannot corrupt it; a run holds the store's
lock shared and ``prune`` holds it alone. A segment whose bytes do not match its checksum is
dropped with one warning and its rows are computed again; a store of another format is set
aside with one line. A row whose steps gave no output row (a filter) is kept as one entry
with ``__part = -1``.

>>> import tempfile, numpy as np
>>> store = ResultStore(tempfile.mkdtemp()).open()
>>> store.add([("k1", 0, {"text": "a", "vec": np.ones(2, np.float32)})])
1
>>> store.index(); sorted(store.entries)
['k1']
>>> store.rows_for(["k1"])[0][0]["text"]
'a'
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import EmbedflowError, user_stacklevel
from .arrow import batch_to_rows, rows_to_table
from .files import AtomicFile, write_lines

FORMAT = 1
Entry = tuple[str, int, dict[str, Any] | None]  # (content key, part, output row; None for "no rows")


class StoreBusy(EmbedflowError):
    """``prune`` needs the store alone while a run uses it."""


class ResultStore:
    """A folder of committed results (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.segments = self.path / "segments"
        self.entries: dict[str, tuple[str, list[int]]] = {}  # content key -> (segment, row positions)
        self._tables: dict[str, Any] = {}
        self._lock_file: Any = None

    # ---- life cycle ----------------------------------------------------------------------
    def open(self, exclusive: bool = False) -> ResultStore:
        """Create or check the folder and hold its lock (shared by runs; ``exclusive`` for
        ``prune``, which fails at once when a run holds it)."""
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.path / "store.json"
        if marker.exists():
            try:
                found = json.loads(marker.read_text()).get("format")
            except (OSError, ValueError):
                found = None
            if found != FORMAT:
                aside = self.path.with_name(f"{self.path.name}.format-{found}-{uuid.uuid4().hex[:6]}")
                os.replace(self.path, aside)
                warnings.warn(
                    f"{self.path} was written by another version of embedflow (format {found}): set aside as {aside}; results are computed anew",
                    stacklevel=user_stacklevel(),
                )
                self.path.mkdir(parents=True)
        if not marker.exists():
            write_lines(marker, iter([json.dumps({"format": FORMAT})]))
        self.segments.mkdir(exist_ok=True)
        (self.path / "refs").mkdir(exist_ok=True)
        self._lock_file = open(self.path / "store.lock", "a+")
        try:
            fcntl.flock(self._lock_file, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            msg = f"{self.path}: a run is using this store; run prune when it has finished"
            raise StoreBusy(msg) from None
        return self

    def close(self) -> None:
        self._tables.clear()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    def __enter__(self) -> ResultStore:
        return self.open() if self._lock_file is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------
    def listed(self) -> list[str]:
        """The segments that count (their sidecar exists), oldest first."""
        return sorted((p.stem for p in self.segments.glob("*.json")), key=lambda s: s.split("-")[0])

    def index(self, wanted: set[str] | None = None) -> None:
        """Read which content keys the store holds (only the key columns are read); with
        ``wanted``, check the checksum of every segment that holds one of them and drop, with
        one warning, a segment that fails it."""
        self.entries.clear()
        for segment in self.listed():
            try:
                keys = self._table(segment).column("__content").to_pylist()
            except (OSError, ValueError, KeyError) as exc:
                if self._intact(segment):  # (else it is dropped as not matching its checksum)
                    self._drop(segment, f"cannot be read ({type(exc).__name__}: {exc})")
                continue
            if wanted is not None and not wanted.isdisjoint(keys) and not self._intact(segment):
                continue
            self._enter(segment, keys)

    def _enter(self, segment: str, keys: list[str]) -> None:
        """Index a segment's keys: the newest segment holding a key wins (a recomputed row)."""
        fresh: dict[str, list[int]] = {}
        for position, key in enumerate(keys):
            fresh.setdefault(key, []).append(position)
        self.entries.update((key, (segment, positions)) for key, positions in fresh.items())

    def rows_for(self, keys: list[str]) -> list[list[dict[str, Any]]]:
        """The output rows of each content key (an empty list for a row with none), in part
        order; the keys must be in :attr:`entries`."""
        by_segment: dict[str, list[int]] = {}
        for key in keys:
            segment, positions = self.entries[key]
            by_segment.setdefault(segment, []).extend(positions)
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for segment, positions in by_segment.items():
            for position, row in zip(positions, _rows(self._table(segment).take(positions))):
                rows[(segment, position)] = row
        out = []
        for key in keys:
            segment, positions = self.entries[key]
            parts = sorted((rows[(segment, p)] for p in positions), key=lambda r: r["__part"])
            out.append([_strip(r) for r in parts if r["__part"] >= 0])
        return out

    def _table(self, segment: str) -> Any:
        import pyarrow as pa

        table = self._tables.get(segment)
        if table is None:
            with pa.memory_map(str(self.segments / f"{segment}.arrow")) as source:
                table = pa.ipc.open_file(source).read_all()
            self._tables[segment] = table
        return table

    def _intact(self, segment: str) -> bool:
        try:
            meta = json.loads((self.segments / f"{segment}.json").read_text())
            digest = _sha256(self.segments / f"{segment}.arrow")
        except (OSError, ValueError) as exc:
            self._drop(segment, f"cannot be checked ({type(exc).__name__}: {exc})")
            return False
        if digest != meta.get("sha256"):
            self._drop(segment, "does not match its checksum")
            return False
        return True

    def _drop(self, segment: str, why: str) -> None:
        warnings.warn(f"{self.path}: segment {segment} {why}; its rows are computed again", stacklevel=user_stacklevel())
        self._tables.pop(segment, None)
        (self.segments / f"{segment}.json").unlink(missing_ok=True)
        (self.segments / f"{segment}.arrow").unlink(missing_ok=True)

    # ---- writing -------------------------------------------------------------------------
    def add(self, entries: list[Entry]) -> int:
        """Commit entries (the caller leaves out keys already held): one segment for those with
        rows, one for those without; returns how many entries were written."""
        with_rows = [e for e in entries if e[2] is not None]
        without = [e for e in entries if e[2] is None]
        return self._segment(with_rows) + self._segment(without)

    def _segment(self, entries: list[Entry]) -> int:
        if not entries:
            return 0
        import pyarrow as pa

        rows = [row for _key, _part, row in entries]
        table = rows_to_table(rows, named=True) if rows[0] is not None else pa.table({"__none": pa.nulls(len(rows))}).drop(["__none"])
        table = pa.table(
            {"__content": pa.array([k for k, _p, _r in entries], pa.string()), "__part": pa.array([p for _k, p, _r in entries], pa.int32())}
            | {name: table.column(name) for name in table.column_names}
        )
        segment = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        file = AtomicFile(self.segments / f"{segment}.arrow")
        try:
            with pa.OSFile(str(file.tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            file.commit()
        finally:
            file.discard()
        meta = {"rows": table.num_rows, "sha256": _sha256(self.segments / f"{segment}.arrow")}
        write_lines(self.segments / f"{segment}.json", iter([json.dumps(meta)]))
        self._tables[segment] = table
        self._enter(segment, [key for key, _part, _row in entries])
        return int(table.num_rows)

    def file_digests(self) -> dict[str, list[Any]]:
        """What earlier runs remembered of the files they hashed (see ``FileDigests``)."""
        try:
            found = json.loads((self.path / "files.json").read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def remember_files(self, seen: dict[str, list[Any]]) -> None:
        """Keep ``seen`` (with what earlier runs remembered) for the next run."""
        if seen:
            write_lines(self.path / "files.json", iter([json.dumps(self.file_digests() | seen)]))

    def refer(self, output: str, keys: Iterable[str]) -> None:
        """Record the content keys ``output``'s last complete run used (what ``prune`` keeps)."""
        name = hashlib.sha256(output.encode()).hexdigest()[:16]
        write_lines(self.path / "refs" / f"{name}.json", iter([json.dumps({"output": output, "keys": sorted(set(keys))})]))

    # ---- housekeeping --------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Segments, entries, bytes and the outputs that refer to the store."""
        segments = self.listed()
        size = sum(p.stat().st_size for p in self.segments.iterdir() if p.is_file())
        refs = [json.loads(p.read_text()) for p in sorted((self.path / "refs").glob("*.json"))]
        self.index()
        return {
            "path": str(self.path),
            "segments": len(segments),
            "entries": len(self.entries),
            "bytes": size,
            "outputs": [r["output"] for r in refs],
        }

    def prune(self) -> tuple[int, int]:
        """Keep only the entries some output's last run used: segments rewritten without the
        others, files no segment lists removed. Needs the store alone (:meth:`open` with
        ``exclusive``). Returns (entries removed, bytes freed)."""
        referred: set[str] = set()
        for ref in (self.path / "refs").glob("*.json"):
            referred.update(json.loads(ref.read_text())["keys"])
        before = sum(p.stat().st_size for p in self.segments.iterdir() if p.is_file())
        removed = 0
        for segment in self.listed():
            table = self._table(segment)
            keep = [i for i, key in enumerate(table.column("__content").to_pylist()) if key in referred]
            if len(keep) == table.num_rows:
                continue
            removed += table.num_rows - len(keep)
            if keep:
                kept = _rows(table.take(keep))
                self.add([(r.pop("__content"), r.pop("__part"), r if r else None) for r in kept])
            self._tables.pop(segment, None)
            (self.segments / f"{segment}.json").unlink()
            (self.segments / f"{segment}.arrow").unlink()
        listed = set(self.listed())
        for leftover in self.segments.iterdir():  # a segment never listed: a run killed mid-commit
            if leftover.stem not in listed:
                with contextlib.suppress(OSError):
                    leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
        after = sum(p.stat().st_size for p in self.segments.iterdir() if p.is_file())
        return removed, before - after


def _rows(table: Any) -> list[dict[str, Any]]:
    return [row for batch in table.to_batches() for row in batch_to_rows(batch)]


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("__content", "__part")}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
