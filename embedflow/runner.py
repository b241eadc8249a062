"""Running a pipeline file to its sink: shards, a manifest, resume, bad rows, a summary.

While a run goes, finished rows are committed in shards (``.<output>.parts/shard-N.parquet``)
listed in a small manifest, each written under a temporary name and renamed. Re-running the
same command after a crash, ``kill -9`` or Ctrl-C reads the manifest, skips the rows whose
key is already in a shard (they are not recomputed) and goes on; at the end the shards are
merged in input order into the output file (atomically) and removed. The row key is the
source's identity: the file path (glob), the ``key:`` column, or the row number.

>>> from embedflow.runner import RunSummary
>>> RunSummary(read=10, written=9, failed=1, resumed=0, seconds=2.0, output="o").line()
'read 10 rows, wrote 9, failed 1 in 2.0s (5.0 rows/s) -> o'
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .collection import DataCollection
from .errors import EmbedflowError
from .io.arrow import batch_to_rows, rows_to_table
from .io.parts import ResumedPart, resumed_parts, total_rows
from .io.writers import Record, atomic_path, write_lines, write_output
from .pipeline import Pipeline
from .yaml_loader import PipelineError

# Commit a shard at least every SHARD_ROWS rows or SHARD_SECONDS seconds, so an interruption
# loses little work (EMBEDFLOW_SHARD_ROWS / EMBEDFLOW_SHARD_SECONDS override them).
SHARD_ROWS = int(os.environ.get("EMBEDFLOW_SHARD_ROWS", "256"))
SHARD_SECONDS = float(os.environ.get("EMBEDFLOW_SHARD_SECONDS", "2.0"))
MANIFEST = "manifest.json"


@dataclass
class RunSummary:
    """What a run did; ``line()`` is the closing line the CLI prints."""

    read: int
    written: int
    failed: int
    resumed: int
    seconds: float
    output: str
    errors: str | None = None

    def line(self) -> str:
        done = f" ({self.resumed} already done by an earlier run)" if self.resumed else ""
        rate = (self.read - self.resumed) / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"read {self.read} rows{done}, wrote {self.written}, failed {self.failed} "
            f"in {self.seconds:.1f}s ({rate:.1f} rows/s) -> {self.output}"
        )
        if self.errors:
            text += f"; failures in {self.errors}"
        return text


class ShardStore:
    """The folder of committed shards beside the output, and its manifest."""

    def __init__(self, output: Path, fingerprint: str):
        self.output = output
        self.dir = output.parent / f".{output.name}.parts"
        self.fingerprint = fingerprint
        self.shards: list[dict[str, Any]] = []
        self.errors_path = self.dir / "errors.jsonl"
        self._lock = threading.Lock()

    def open(self, resume: bool) -> set[str]:
        """Start or resume; returns the keys already committed."""
        manifest = self.dir / MANIFEST
        if self.dir.exists() and not resume:
            shutil.rmtree(self.dir)
        if not manifest.exists():
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.mkdir(parents=True)
            self._write_manifest()
            return set()
        state = json.loads(manifest.read_text())
        if state.get("fingerprint") != self.fingerprint:
            msg = (
                f"{self.output}: an unfinished run of a different pipeline or parameters left "
                f"{self.dir}; re-run with --no-resume to start over (that folder is then removed)"
            )
            raise PipelineError(msg)
        self.shards = state["shards"]
        listed = {s["file"] for s in self.shards}
        for leftover in self.dir.glob("shard-*"):  # written but never listed: a crash mid-commit
            if leftover.name not in listed:
                leftover.unlink()
        self.errors_path.unlink(missing_ok=True)  # failed rows are tried again
        import pyarrow.parquet as pq

        done: set[str] = set()
        for shard in self.shards:
            done.update(pq.read_table(self.dir / shard["file"], columns=["__key"]).column("__key").to_pylist())
        return done

    def _write_manifest(self) -> None:
        state = {"format": 1, "fingerprint": self.fingerprint, "shards": self.shards}
        write_lines(self.dir / MANIFEST, iter([json.dumps(state, indent=1)]))

    def commit(self, records: list[Record]) -> None:
        """Write one shard of (row number, key, row) records, then list it in the manifest."""
        if not records:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = rows_to_table([r for _, _, r in records], named=True)
        table = table.append_column("__row", pa.array([n for n, _, _ in records], pa.int64()))
        table = table.append_column("__key", pa.array([k for _, k, _ in records], pa.string()))
        name = f"shard-{len(self.shards):06d}.parquet"
        with atomic_path(self.dir / name) as tmp:
            pq.write_table(table, tmp)
        self.shards.append({"file": name, "rows": len(records), "first": records[0][0], "last": records[-1][0]})
        self._write_manifest()

    def record_failure(self, record: dict[str, Any]) -> None:
        with self._lock, open(self.errors_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def merged(self) -> Iterator[Record]:
        """Every committed row, in source order (a streaming k-way merge of the shards)."""
        import pyarrow.parquet as pq

        def rows_of(shard: dict[str, Any]) -> Iterator[Record]:
            for batch in pq.ParquetFile(self.dir / shard["file"]).iter_batches(batch_size=1024):
                for row in batch_to_rows(batch):
                    yield int(row.pop("__row")), str(row.pop("__key")), row

        return heapq.merge(*(rows_of(s) for s in self.shards), key=lambda r: r[0])

    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _identity(row: Any, position: int, key: str | None) -> str:
    if key is None:
        return str(position)
    try:
        value = row[key]
    except (KeyError, TypeError):
        have = list(row) if isinstance(row, dict) else type(row).__name__
        msg = f"row {position} has no key column {key!r} (columns: {have}); fix source: key:"
        raise EmbedflowError(msg) from None
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def run_pipeline(
    pipeline: Pipeline,
    *,
    device: str | None = None,
    engine: str | None = None,
    limit: int | None = None,
    resume: bool = True,
    progress: bool | None = None,
) -> RunSummary:
    """Run ``pipeline`` to its sink with shards and resume; returns the summary.

    A KeyboardInterrupt commits what is finished before it propagates, so the next run
    resumes from there.
    """
    sink = pipeline.sink
    if sink is None:
        raise PipelineError(f"{pipeline.file}: no sink: add e.g. sink: {{parquet: out/vectors.parquet}}")
    dc = pipeline.collection
    if device is not None:
        dc = dc.set_device(device)
    if engine is not None:
        dc = dc.set_engine(engine)
    if sink.kind in ("milvus", "print"):
        return _run_streaming(pipeline, dc.head(limit) if limit is not None else dc, progress)
    fingerprint = pipeline.fingerprint() + (f"-limit{limit}" if limit is not None else "")
    store = ShardStore(sink.path, fingerprint)
    done = store.open(resume)
    resumed = store.rows()
    positional = pipeline.key is None  # the row key is the source row number
    keys: dict[int, str] = {}  # source row number -> row key, for rows in flight (column keys)
    counts = {"read": 0}
    source = dc.plan.source

    def key_of(position: int) -> str | None:
        return str(position) if positional else keys.pop(position, None)

    def keyed_rows() -> Iterator[tuple[int, Any]]:
        for position, row in enumerate(source.open()):
            if limit is not None and position >= limit:
                return
            counts["read"] += 1
            ident = _identity(row, position, pipeline.key)
            if ident in done:
                continue
            if not positional:
                keys[position] = ident
            yield position, row

    parts: Callable[[], list[ResumedPart]] | None = None
    if positional and source.parts is not None:  # an engine that reads on its workers skips done rows there
        cut = source.parts

        def remaining_parts() -> list[ResumedPart]:
            remaining = resumed_parts(cut(), {int(k) for k in done}, limit)
            counts["read"] = total_rows(remaining, limit)
            return remaining

        parts = remaining_parts

    failed = {"n": 0}

    def on_failure(record: dict[str, Any]) -> None:
        failed["n"] += 1
        record["key"] = key_of(record["row"]) if record.get("row") is not None else None
        store.record_failure(record)

    plan = replace(dc.plan, source=replace(source, open=keyed_rows, keyed=True, parts=parts), errors=on_failure)
    run = DataCollection(plan, dc.named, dc.columns, "raise")
    wanted = sink.columns
    start = time.perf_counter()
    buffer: list[Record] = []
    last_commit = time.perf_counter()
    try:
        for positions, rows in run._keyed_chunks(progress=progress):
            for position, row in zip(positions, rows):
                out = {c: row[c] for c in wanted} if wanted else row
                buffer.append((position, key_of(position), out))
            if len(buffer) >= SHARD_ROWS or time.perf_counter() - last_commit >= SHARD_SECONDS:
                store.commit(buffer)
                buffer, last_commit = [], time.perf_counter()
    except KeyboardInterrupt:
        store.commit(buffer)  # keep what is finished: the next run resumes after it
        raise
    store.commit(buffer)
    written = write_output(sink.kind, sink.path, store.merged(), rows=store.rows(), column=sink.column)
    errors_target = sink.path.with_name(sink.path.name + ".errors.jsonl")
    errors = None
    if store.errors_path.exists() and failed["n"]:
        lines = sorted(store.errors_path.read_text(encoding="utf-8").splitlines(keepends=True), key=lambda s: json.loads(s)["row"] or 0)
        write_lines(errors_target, iter(lines))
        errors = str(errors_target)
    else:
        errors_target.unlink(missing_ok=True)
    store.remove()
    return RunSummary(
        read=counts["read"],
        written=written,
        failed=failed["n"],
        resumed=resumed,
        seconds=time.perf_counter() - start,
        output=str(sink.path),
        errors=errors,
    )


def _run_streaming(pipeline: Pipeline, dc: DataCollection, progress: bool | None) -> RunSummary:
    """Sinks without shards: ``milvus`` upserts by row key (a rerun replaces, never
    duplicates), ``print`` writes a table to standard output."""
    sink = pipeline.sink
    assert sink is not None
    failures: list[dict[str, Any]] = []
    plan = replace(dc.plan, errors=failures if dc.plan.errors is None else dc.plan.errors)
    run = DataCollection(plan, dc.named, dc.columns, "raise")
    start = time.perf_counter()
    read = 0
    if sink.kind == "print":
        from .display import report

        rows = []
        for _numbers, chunk in run._keyed_chunks(progress=False):
            rows.extend({c: r[c] for c in sink.columns} if sink.columns else r for r in chunk)
        print(report(rows))
        written = read = len(rows)
    else:
        from .io.milvus import MilvusWriter

        writer = MilvusWriter(str(sink.path), sink.collection or "", sink.vector, sink.fields, sink.metric)
        try:
            for numbers, chunk in run._keyed_chunks(progress=progress):
                for number, row in zip(numbers, chunk):
                    writer.add(_identity(row, number, pipeline.key), row)
                    read += 1
        finally:
            writer.close()
        written = writer.written
    return RunSummary(
        read=read + len(failures), written=written, failed=len(failures), resumed=0,
        seconds=time.perf_counter() - start, output=f"{sink.kind} {sink.path}" + (f" collection {sink.collection}" if sink.collection else ""),
    )
