"""Running a pipeline file to its sink: resume, bad rows, a summary.

A file sink (parquet, jsonl, npy) is wrapped in a resumable sink (:mod:`embedflow.io.shards`):
finished rows are committed to shards beside the output as they finish, a rerun after a crash,
``kill -9`` or Ctrl-C skips the rows already committed (they are not recomputed) and at the
end the shards are merged in input order into the output. A rerun continues only if the
pipeline, its parameters and its input are unchanged. Milvus upserts by row key and the print
sink prints a table: neither needs shards.

>>> from embedflow.pipelines.runner import RunSummary
>>> RunSummary(read=10, written=9, failed=1, resumed=0, seconds=2.0, output="o").line()
'read 10 rows, wrote 9, failed 1 in 2.0s (5.0 rows/s) -> o'
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..engines import FailureLog, execute
from ..errors import PipelineError
from ..io.files import FileSink, JsonlSink, NpySink, ParquetSink, write_lines
from ..io.milvus import MilvusSink
from ..io.ranges import RowFilter, as_ranges, count
from ..io.remote import remove
from ..io.shards import ResumableSink, ShardStore, in_row_order
from ..io.sinks import Sink
from ..plan import Plan, RunSettings
from ..views.display import PrintSink
from .checks import preflight, schema_columns
from .schema import Pipeline, SinkSpec

# Commit a shard at least every SHARD_ROWS rows or SHARD_SECONDS seconds, so an interruption
# loses little work (EMBEDFLOW_SHARD_ROWS / EMBEDFLOW_SHARD_SECONDS override them).
SHARD_ROWS = int(os.environ.get("EMBEDFLOW_SHARD_ROWS", "256"))
SHARD_SECONDS = float(os.environ.get("EMBEDFLOW_SHARD_SECONDS", "2.0"))


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
        text = f"read {self.read} rows{done}, wrote {self.written}, failed {self.failed} in {self.seconds:.1f}s ({rate:.1f} rows/s) -> {self.output}"
        if self.errors:
            text += f"; failures in {self.errors}"
        return text


def build_sink(spec: SinkSpec, schema: tuple[str, ...] | None = None) -> Sink:
    """The sink a pipeline file's ``sink:`` names; ``schema`` names the columns of an empty output."""
    if spec.kind == "parquet":
        return ParquetSink(spec.output, spec.columns, schema_columns=schema)
    if spec.kind == "jsonl":
        return JsonlSink(spec.output, spec.columns)
    if spec.kind == "npy":
        assert spec.column is not None
        return NpySink(spec.output, spec.column)
    if spec.kind == "milvus":
        return MilvusSink(spec.target, spec.collection or "", spec.vector, spec.fields, spec.metric)
    return PrintSink(spec.columns)


def errors_path(spec: SinkSpec) -> Path | str:
    """Where the failures of a run go: ``<output>.errors.jsonl`` (beside a URL too; for a
    Milvus server, the collection's name in the current folder)."""
    if spec.kind == "milvus" and spec.remote:
        return Path(f"{spec.collection}.errors.jsonl")
    if isinstance(spec.output, str):
        return spec.output + ".errors.jsonl"
    return spec.path.with_name(spec.path.name + ".errors.jsonl")


def _describe(spec: SinkSpec) -> str:
    if spec.kind in ("parquet", "jsonl", "npy"):
        return str(spec.output)
    return f"{spec.kind} {spec.target}" + (f" collection {spec.collection}" if spec.collection else "")


def run_pipeline(
    pipeline: Pipeline,
    *,
    device: str | None = None,
    engine: str | None = None,
    limit: int | None = None,
    resume: bool = True,
    progress: bool | None = None,
) -> RunSummary:
    """Run ``pipeline`` to its sink (resuming an unfinished run of a file sink); returns the
    summary. A KeyboardInterrupt keeps what is finished before it propagates."""
    spec = pipeline.sink
    if spec is None:
        raise PipelineError(f"{pipeline.file}: no sink: add e.g. sink: {{parquet: out/vectors.parquet}}")
    dc = pipeline.collection
    if device is not None:
        dc = dc.set_device(device)
    if engine is not None:
        dc = dc.set_engine(engine)
    plan = dc.plan
    preflight(pipeline)
    sink = build_sink(spec, schema_columns(pipeline))
    start = time.perf_counter()
    target = errors_path(spec)
    if isinstance(sink, FileSink):
        fingerprint = pipeline.fingerprint() + (f"-limit{limit}" if limit is not None else "")
        written, failed, resumed, read = _run_resumable(
            plan, dc.settings, sink, spec.path, fingerprint, target, named=dc.named, limit=limit, resume=resume, progress=progress
        )
    else:
        records: list[dict[str, Any]] = []
        failures = FailureLog(records.append, plan.key_column)
        if limit is not None:
            plan = replace(plan, source=plan.source.with_filter(RowFilter((), limit)))
        quiet = False if isinstance(sink, PrintSink) else progress
        written = execute(plan, sink, dc.settings, named=dc.named, progress=quiet, failures=failures)
        if records:
            write_lines(target, iter(records_as_lines(records)))
        failed, resumed = failures.count, 0
        read = written + failed
        if plan.expands and isinstance(sink, MilvusSink):  # rows came of rows: count the source's
            read = len(sink.source_rows() | failures.rows)
    return RunSummary(
        read=read,
        written=written,
        failed=failed,
        resumed=resumed,
        seconds=time.perf_counter() - start,
        output=_describe(spec),
        errors=str(target) if failed else None,
    )


def _run_resumable(
    plan: Plan,
    settings: RunSettings,
    sink: FileSink,
    staging: Path,
    fingerprint: str,
    errors: Path | str,
    *,
    named: bool,
    limit: int | None,
    resume: bool,
    progress: bool | None,
) -> tuple[int, int, int, int]:
    """A file sink's run with shards kept beside ``staging`` (the output, or for a URL a local
    place for it): (rows written, failed, already done by an earlier run, source rows read)."""
    store = ShardStore(staging, fingerprint, plan.source.identity())
    try:
        done = store.open(resume)
        failures = FailureLog(store.record_failure, plan.key_column)
        plan = replace(plan, source=plan.source.with_filter(RowFilter(done, limit)))
        resumable = ResumableSink(sink, store, SHARD_ROWS, SHARD_SECONDS, allow_empty=plan.source.allow_empty or bool(done))
        execute(plan, resumable, settings, named=named, progress=progress, failures=failures)
        read = sink.count + failures.count
        if plan.expands:  # several rows may come of one: count the source rows
            read = count(as_ranges({n for first, last in store.done() for n in range(first, last + 1)} | failures.rows))
        lines = store.failures()
        if lines:  # before the shards go: a kill here leaves what a rerun needs
            write_lines(errors, iter(lines))
        else:
            remove(errors)
        store.remove()
    except BaseException:
        store.discard_if_unstarted()  # a model that would not load leaves no partial output
        raise
    finally:
        store.close()
    return sink.count, failures.count, count(done), read


def records_as_lines(records: list[dict[str, Any]]) -> list[str]:
    """Failure records as JSON lines in row order."""
    return in_row_order(json.dumps(r) + "\n" for r in records)
