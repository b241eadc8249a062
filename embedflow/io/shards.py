"""Resumable output: finished rows are committed in shards beside the output as they come;
at the end the shards are merged in input order into the real sink.

The folder ``.<output>.parts/`` holds the shards (Parquet, each row with its source row
number and key) and ``manifest.json``, which lists the committed shards with the row numbers
each holds, the pipeline's fingerprint and the input's identity. A shard is written under a
temporary name and renamed, then listed in the manifest (also written atomically), so at any
instant a shard either counts or does not; a rerun skips the rows the manifest lists. One run
at a time holds ``.<output>.lock`` (released on any exit, a dead process's lock is free).

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "v.parquet"
>>> store = ShardStore(out, "pipeline-hash")
>>> store.open(resume=True)
()
>>> store.commit([(1, "1", {"x": 2}), (0, "0", {"x": 1})])
>>> [number for number, _key, _row in store.merged()]
[0, 1]
>>> store.close(); store.remove()
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import EmbedflowError, UsageError
from .arrow import batch_to_rows, rows_to_table
from .files import AtomicFile, FileSink, write_lines
from .keys import PartKeys, row_key
from .ranges import Ranges, as_ranges
from .sinks import Sink, SinkContext, select_columns

MANIFEST = "manifest.json"
FORMAT = 2
Record = tuple[int, str, dict[str, Any]]  # (source row number, row key, row)


def in_row_order(lines: Iterable[str]) -> list[str]:
    """Failure records (JSON lines) sorted by their source row — the one order every errors
    file is written in (a record without a row counts as row 0).

    >>> in_row_order(['{"row": 2}', '{"row": 1}', '{"step": "x"}'])
    ['{"step": "x"}', '{"row": 1}', '{"row": 2}']
    """
    return sorted(lines, key=lambda s: json.loads(s).get("row") or 0)


class OutputLocked(EmbedflowError):
    """Another run is writing the same output."""


class StaleRun(UsageError):
    """An unfinished run left shards that this run cannot continue (rerun with --no-resume)."""


class ShardStore:
    """The folder of committed shards beside ``output``, its manifest and its lock."""

    def __init__(self, output: str | os.PathLike[str], fingerprint: str, identity: dict[str, Any] | None = None):
        self.output = Path(output)
        self.dir = self.output.parent / f".{self.output.name}.parts"
        self.fingerprint = fingerprint
        self.identity = identity or {}
        self.shards: list[dict[str, Any]] = []
        self.errors_path = self.dir / "errors.jsonl"
        self._errors_lock = threading.Lock()
        self._lock: Any = None
        self.created: list[Path] = []  # the output's folders that this run made
        self.fresh = False  # whether this run started the shard folder (nothing to resume)

    # ---- life cycle ----------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the output's lock, or fail at once saying who holds it."""
        from filelock import FileLock, Timeout

        path = self.output.parent / f".{self.output.name}.lock"
        self.created = [d for d in (self.output.parent, *self.output.parent.parents) if not d.exists()]
        self.output.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = path.with_suffix(".pid")
            who = holder.read_text().strip() if holder.exists() else "another process"
            msg = f"{self.output}: another run (pid {who}) is writing this output; wait for it to finish, or write to another output"
            raise OutputLocked(msg) from None
        path.with_suffix(".pid").write_text(str(os.getpid()))
        self._lock = lock

    def open(self, resume: bool) -> Ranges:
        """Start or resume (taking the lock); returns the row numbers already committed."""
        if self._lock is None:
            self.lock()
        self._remove_trash()
        manifest = self.dir / MANIFEST
        if self.dir.exists() and (not resume or not manifest.exists()):
            self._discard_dir()
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            self._write_manifest()
            self.fresh = True
            return ()
        state = self._read_manifest(manifest)
        if state.get("fingerprint") != self.fingerprint:
            msg = (
                f"{self.output}: an unfinished run of a different pipeline or different parameters left {self.dir}; "
                "rerun with --no-resume to start over (that folder is then removed)"
            )
            raise StaleRun(msg)
        if state.get("identity", {}) != self.identity:
            changed = sorted(
                k for k in set(state.get("identity", {})) | set(self.identity) if state.get("identity", {}).get(k) != self.identity.get(k)
            )
            msg = (
                f"{self.output}: the input changed since an unfinished run started ({', '.join(changed)}); its "
                f"{self.committed_rows(state['shards'])} finished rows would be stale — rerun with --no-resume to start over"
            )
            raise StaleRun(msg)
        self.shards = state["shards"]
        listed = {s["file"] for s in self.shards}
        for leftover in self.dir.glob("shard-*"):  # written but never listed: a crash mid-commit
            if leftover.name not in listed:
                leftover.unlink(missing_ok=True)
        missing = [s["file"] for s in self.shards if not (self.dir / s["file"]).exists()]
        if missing:
            msg = f"{self.output}: {self.dir} lists shard {missing[0]} but it is gone; rerun with --no-resume to start over"
            raise StaleRun(msg)
        self.errors_path.unlink(missing_ok=True)  # failed rows are tried again
        return self.done()

    def _read_manifest(self, manifest: Path) -> dict[str, Any]:
        try:
            state = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            msg = f"{self.output}: the manifest {manifest} of an unfinished run cannot be read ({exc}); rerun with --no-resume to start over"
            raise StaleRun(msg) from exc
        if state.get("format") != FORMAT:
            msg = f"{self.output}: {self.dir} was left by another version of embedflow; rerun with --no-resume to start over"
            raise StaleRun(msg)
        return state

    @staticmethod
    def committed_rows(shards: list[dict[str, Any]]) -> int:
        return sum(s["rows"] for s in shards)

    def done(self) -> Ranges:
        """The row numbers the committed shards hold."""
        numbers = [n for s in self.shards for first, last in s["ranges"] for n in range(first, last + 1)]
        return as_ranges(numbers)

    def rows(self) -> int:
        return self.committed_rows(self.shards)

    def _write_manifest(self) -> None:
        state = {"format": FORMAT, "fingerprint": self.fingerprint, "identity": self.identity, "shards": self.shards}
        write_lines(self.dir / MANIFEST, iter([json.dumps(state, indent=1)]))

    # ---- writing -------------------------------------------------------------------------
    def commit(self, records: list[Record]) -> None:
        """Write one shard of (row number, key, row) records, then list it in the manifest."""
        if not records:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = sorted(records, key=lambda r: r[0])
        table = rows_to_table([r for _, _, r in records], named=True)
        table = table.append_column("__row", pa.array([n for n, _, _ in records], pa.int64()))
        table = table.append_column("__key", pa.array([k for _, k, _ in records], pa.string()))
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        file = AtomicFile(self.dir / name)
        try:
            pq.write_table(table, file.tmp)
            file.commit()
        finally:
            file.discard()
        self.shards.append({"file": name, "rows": len(records), "ranges": [list(r) for r in as_ranges(n for n, _, _ in records)]})
        self._write_manifest()

    def record_failure(self, record: dict[str, Any]) -> None:
        with self._errors_lock, open(self.errors_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def failures(self) -> list[str]:
        """The recorded failures as JSON lines, in row order."""
        if not self.errors_path.exists():
            return []
        return in_row_order(self.errors_path.read_text(encoding="utf-8").splitlines(keepends=True))

    def merged(self) -> Iterator[Record]:
        """Every committed row once, in source order (a streaming k-way merge of the shards)."""
        import pyarrow.parquet as pq

        def rows_of(shard: dict[str, Any]) -> Iterator[Record]:
            for batch in pq.ParquetFile(self.dir / shard["file"]).iter_batches(batch_size=1024):
                for row in batch_to_rows(batch):
                    yield int(row.pop("__row")), str(row.pop("__key")), row

        last, keys = None, set[str]()
        for record in heapq.merge(*(rows_of(s) for s in self.shards), key=lambda r: r[0]):
            if record[0] != last:
                last, keys = record[0], set()
            if record[1] not in keys:  # a row committed twice is written once (each part of it)
                keys.add(record[1])
                yield record

    # ---- cleaning up ---------------------------------------------------------------------
    def _discard_dir(self) -> None:
        """Move the folder out of the way in one rename, then delete it: a kill at any
        instant leaves either the whole folder or trash that the next run removes."""
        trash = self.dir.with_name(f"{self.dir.name}.trash-{uuid.uuid4().hex[:8]}")
        os.replace(self.dir, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_trash(self) -> None:
        for trash in self.dir.parent.glob(f"{self.dir.name}.trash-*"):
            shutil.rmtree(trash, ignore_errors=True)

    def remove(self) -> None:
        """Remove the shards once the output is written."""
        if self.dir.exists():
            self._discard_dir()

    def discard_if_unstarted(self) -> bool:
        """After a run that failed before it committed a row or recorded a failure (a model
        that would not load): remove what this run created — the shard folder, and the lock and
        the output's folders when this run made them — so a failed run leaves no partial
        output. Returns whether it did."""
        if self._lock is None or not self.fresh or self.shards or self.errors_path.exists():
            return False
        self.remove()
        if self.created:
            for name in (f".{self.output.name}.lock", f".{self.output.name}.pid"):
                self.output.parent.joinpath(name).unlink(missing_ok=True)
            for folder in self.created:  # innermost first; only while empty
                try:
                    folder.rmdir()
                except OSError:
                    break
        return True

    def close(self) -> None:
        """Release the lock."""
        if self._lock is not None:
            self.output.parent.joinpath(f".{self.output.name}.lock").with_suffix(".pid").unlink(missing_ok=True)
            self._lock.release()
            self._lock = None


class ResumableSink(Sink):
    """Wraps a file sink: rows are committed to ``store`` every ``every_rows`` rows or
    ``every_seconds`` seconds, in whatever order they finish; ``close`` merges every committed
    row in input order into the wrapped sink. Commits are idempotent: a row handed over is
    committed once, whatever interrupts the run."""

    ordered = False  # set in open: True when a row may come as several (each keyed by its index)

    def __init__(self, inner: FileSink, store: ShardStore, every_rows: int = 256, every_seconds: float = 2.0, allow_empty: bool = True):
        self.inner, self.store = inner, store
        self.allow_empty = allow_empty
        self.every_rows, self.every_seconds = every_rows, every_seconds
        self.buffer: list[Record] = []
        self.last_commit = time.monotonic()

    def target(self) -> Any:
        return self.inner.target()

    def open(self, context: SinkContext) -> None:
        super().open(context)
        # the parts of one row (chunk, flat_map) come together and in order: each is keyed by its
        # index, and a row is committed with all of its parts or not at all
        self.ordered = context.expands
        self.parts = PartKeys()

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        key_column, expands = self.context.key_column, self.context.expands
        kept = select_columns(rows, self.inner.columns) if self.context.named else rows
        for n, row, out in zip(numbers, rows, kept):
            key = row_key(n, row, key_column) or ""
            self.buffer.append((int(n), self.parts.key(int(n), key) if expands else key, out))
        if len(self.buffer) >= self.every_rows or time.monotonic() - self.last_commit >= self.every_seconds:
            self.commit()

    def commit(self, final: bool = False) -> None:
        """Commit the buffered rows; unless ``final``, the parts of the last source row stay
        buffered (more of them may come), so a resumed run never finds a row half done."""
        records, self.buffer = self.buffer, []  # taken first: an interrupt cannot commit them twice
        if self.context.expands and not final and records:
            cut = len(records)
            while cut and records[cut - 1][0] == records[-1][0]:
                cut -= 1
            records, self.buffer = records[:cut], records[cut:]
        self.store.commit(records)
        self.last_commit = time.monotonic()

    def abort(self) -> None:
        """Keep what is finished, so that the next run resumes after it (a row whose parts
        may not all have come is done again)."""
        self.commit()

    def close(self) -> Path:
        self.commit(final=True)
        if not self.allow_empty and self.store.rows() == 0 and not self.store.failures():
            msg = f"{self.store.output}: the input has no rows, so nothing was written; add allow_empty: true to the source if an empty input is fine"
            raise EmbedflowError(msg)
        self.inner.open(SinkContext(named=True, key_column=self.context.key_column, expands=self.context.expands))
        try:
            chunk_numbers: list[int] = []
            chunk_rows: list[dict[str, Any]] = []
            key_column = self.context.key_column
            for number, key, row in self.store.merged():
                if key_column is not None and key_column not in row:
                    row[key_column] = key  # the sink may need the key (npy's key file)
                chunk_numbers.append(number)
                chunk_rows.append(row)
                if len(chunk_rows) >= 1024:
                    self.inner.write(chunk_numbers, chunk_rows)
                    chunk_numbers, chunk_rows = [], []
            if chunk_rows:
                self.inner.write(chunk_numbers, chunk_rows)
            result = self.inner.close()
        except BaseException:
            self.inner.abort()
            raise
        return result
