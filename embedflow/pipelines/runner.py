"""Running a pipeline file to its sink: incremental runs, bad rows, a summary.

A file sink's run (parquet, jsonl, npy) goes through a result store beside the output
(:mod:`embedflow.engines.incremental`): finished rows are committed to it as they finish, under
a key made of the row's content and the pipeline's steps. A rerun — after a crash, ``kill -9``
or Ctrl-C, or on an input that changed — computes only the rows the store does not hold and
writes the output from it in input order. Milvus upserts by row key and the print sink prints
a table: neither has a store.

>>> from embedflow.pipelines.runner import RunSummary
>>> RunSummary(read=201, written=201, failed=0, reused=196, seconds=2.5, output="o").line()
'read 201 rows, reused 196, wrote 201, failed 0 in 2.5s (5 computed at 2.0 rows/s) -> o'
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..engines import FailureLog, execute
from ..engines.incremental import Outcome, run_incremental
from ..errors import PipelineError
from ..io.files import FileSink, JsonlSink, NpySink, ParquetSink, in_row_order, write_lines
from ..io.milvus import MilvusSink
from ..io.output_lock import OutputLock
from ..io.ranges import RowFilter
from ..io.remote import remove
from ..io.results import ResultStore
from ..io.sinks import Sink
from ..plan import Plan, RunSettings
from ..views.display import PrintSink
from .checks import preflight, schema_columns
from .schema import Pipeline, SinkSpec

# Commit finished rows to the result store at least every COMMIT_ROWS rows or COMMIT_SECONDS
# seconds, so an interruption loses little work (EMBEDFLOW_SHARD_ROWS / EMBEDFLOW_SHARD_SECONDS).
COMMIT_ROWS = int(os.environ.get("EMBEDFLOW_SHARD_ROWS", "256"))
COMMIT_SECONDS = float(os.environ.get("EMBEDFLOW_SHARD_SECONDS", "2.0"))


@dataclass
class RunSummary:
    """What a run did; ``line()`` is the closing line the CLI prints. ``reused``: rows taken
    from the result store (None for a sink that has none); the rate counts the rows computed."""

    read: int
    written: int
    failed: int
    reused: int | None
    seconds: float
    output: str
    errors: str | None = None
    not_reusable: str | None = None

    def line(self) -> str:
        reused = f", reused {self.reused}" if self.reused else ""  # said when the store gave rows
        computed = self.read - (self.reused or 0)
        rate = f"{computed / self.seconds if self.seconds > 0 else 0.0:.1f} rows/s"
        speed = rate if not self.reused else f"{computed} computed at {rate}" if computed else "nothing computed"
        text = f"read {self.read} rows{reused}, wrote {self.written}, failed {self.failed} in {self.seconds:.1f}s ({speed}) -> {self.output}"
        if self.errors:
            text += f"; failures in {self.errors}"
        if self.not_reusable:
            text += f" (nothing reused: {self.not_reusable} makes a row's results depend on other rows)"
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
    cache: str | os.PathLike[str] | None = None,
) -> RunSummary:
    """Run ``pipeline`` to its sink; returns the summary. A file sink's run is incremental:
    rows whose results the store (``cache``, default beside the output) holds are reused —
    what an interrupted run finished, and what an earlier run computed for unchanged rows —
    unless ``resume`` is False (then every row is computed, and stored). A KeyboardInterrupt
    keeps what is finished before it propagates."""
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
    not_reusable = None
    if isinstance(sink, (FileSink, MilvusSink)):
        if isinstance(sink, MilvusSink):
            sink.mirror = True  # every row is written: what the run did not write is gone from the input
        outcome = _run_incremental(
            plan, dc.settings, sink, _staging(spec), _describe(spec), target,
            named=dc.named, limit=limit, recompute=not resume, progress=progress, cache=cache,
        )  # fmt: skip
        written, failed, reused, read, not_reusable = outcome.written, outcome.failed, outcome.reused, outcome.read, outcome.not_reusable
    else:
        records: list[dict[str, Any]] = []
        failures = FailureLog(records.append, plan.key_column)
        if limit is not None:
            plan = replace(plan, source=plan.source.with_filter(RowFilter((), limit)))
        quiet = False if isinstance(sink, PrintSink) else progress
        written = execute(plan, sink, dc.settings, named=dc.named, progress=quiet, failures=failures)
        if records:
            write_lines(target, iter(records_as_lines(records)))
        failed, reused = failures.count, None
        read = written + failed
        if plan.expands and isinstance(sink, MilvusSink):  # rows came of rows: count the source's
            read = len(sink.source_rows() | failures.rows)
    return RunSummary(
        read=read,
        written=written,
        failed=failed,
        reused=reused,
        seconds=time.perf_counter() - start,
        output=_describe(spec),
        errors=str(target) if failed else None,
        not_reusable=not_reusable,
    )


def _staging(spec: SinkSpec) -> Path:
    """The local path whose lock and result store a run uses: the output file (for a URL, a
    local place for it); for Milvus, one per collection beside a Milvus Lite file, or in the
    current folder for a server."""
    if spec.kind != "milvus":
        return spec.path
    return Path(spec.collection or "collection") if spec.remote else spec.path.with_name(f"{spec.path.name}.{spec.collection}")


def _run_incremental(
    plan: Plan,
    settings: RunSettings,
    sink: FileSink | MilvusSink,
    staging: Path,
    output: str,
    errors: Path | str,
    *,
    named: bool,
    limit: int | None,
    recompute: bool,
    progress: bool | None,
    cache: str | os.PathLike[str] | None,
) -> Outcome:
    """A run through the result store beside ``staging`` (:mod:`embedflow.engines.incremental`),
    holding its lock; the failures go to ``errors`` in row order."""
    lock = OutputLock(staging).acquire()
    folder = Path(cache) if cache is not None else staging.parent / f".{staging.name}.cache"
    fresh = not folder.exists()
    store = ResultStore(folder)
    records: list[dict[str, Any]] = []
    failures = FailureLog(records.append, plan.key_column)
    try:
        store.open()
        shutil.rmtree(staging.parent / f".{staging.name}.parts", ignore_errors=True)  # an older version's shards
        outcome = run_incremental(
            plan, settings, sink, store, failures, named=named, limit=limit, recompute=recompute,
            allow_empty=plan.source.allow_empty, progress=progress, commit_rows=COMMIT_ROWS, commit_seconds=COMMIT_SECONDS,
        )  # fmt: skip
        if outcome.used is not None:
            store.refer(output, outcome.used)
        if records:
            write_lines(errors, iter(records_as_lines(records)))
        else:
            remove(errors)
    except BaseException:
        store.close()
        if fresh and not store.listed():  # a model that would not load leaves nothing behind
            shutil.rmtree(folder, ignore_errors=True)
            lock.release(tidy=True)
        raise
    finally:
        store.close()
        lock.release()
    return outcome


def records_as_lines(records: list[dict[str, Any]]) -> list[str]:
    """Failure records as JSON lines in row order."""
    return in_row_order(json.dumps(r) + "\n" for r in records)
