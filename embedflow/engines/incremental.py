"""Incremental runs: compute only the rows whose results the store does not hold — one
mechanism for resuming a killed run and for re-embedding a corpus that changed.

1. Every source row gets its content key: the row's values (a file column by the file's bytes,
   :mod:`embedflow.io.content`) with the chain's fingerprint (:mod:`embedflow.plan.fingerprint`).
2. Rows whose key the :class:`~embedflow.io.results.ResultStore` holds are reused; the others
   run through the engine (a row filter, the same on every engine) and their results are
   committed to the store as they finish — so a killed run loses only what was not committed.
3. The output is written from the store in source order: the same rows, order and columns a
   fresh run writes. Rows no longer in the input are not in it; failures are not stored (they
   are tried, and recorded, again).

A chain whose results for one row depend on other rows (``head``, ``batch``, a ``group`` by a
column) reuses nothing: it runs whole, and says why.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import EmbedflowError, remember_user_site
from ..io.content import FileDigests, row_digest
from ..io.keys import row_key
from ..io.ranges import RowFilter, as_ranges
from ..io.readers import BadRow
from ..io.results import Entry, ResultStore, iter_chunks
from ..io.sinks import Sink, SinkContext, select_columns
from ..operator import is_operator_class
from ..plan import Apply, Plan, RunSettings, operator_class
from ..plan.fingerprint import chain_fingerprint, row_local
from .failures import FailureLog
from .run import execute, naming

VALUE = "value"  # the one column an unnamed row is stored in
SourceRow = tuple[int, str | None, str]  # (row number, content key; None for an unreadable row, output key)


@dataclass
class Outcome:
    """What an incremental run did: source rows read, reused from the store, rows written,
    rows failed, and why nothing could be reused (None when results were reusable)."""

    read: int
    reused: int
    written: int
    failed: int
    not_reusable: str | None = None
    used: list[str] | None = None  # the content keys of the rows read (what the store must keep)
    result: Any = None  # what the sink's close returned


def run_incremental(
    plan: Plan,
    settings: RunSettings,
    sink: Sink,
    store: ResultStore,
    failures: FailureLog,
    *,
    named: bool,
    limit: int | None = None,
    recompute: bool = False,
    allow_empty: bool = True,
    progress: bool | None = None,
    commit_rows: int = 256,
    commit_seconds: float = 2.0,
) -> Outcome:
    """Run ``plan`` into ``sink`` through ``store`` (see the module docstring); ``recompute``
    reuses nothing (what it computes is stored all the same); without ``allow_empty`` an input
    without rows is an error before anything is written."""
    why = row_local(plan)
    if why is not None:
        limited = replace(plan, source=plan.source.with_filter(RowFilter((), limit))) if limit is not None else plan
        counted = _Counting(sink)
        result = execute(limited, counted, settings, named=named, progress=progress, failures=failures)
        return Outcome(counted.count + failures.count, 0, counted.count, failures.count, why, result=result)
    memo = FileDigests(store.file_digests())
    rows = content_keys(plan, limit, memo)
    store.remember_files(memo.seen)
    if not rows and not allow_empty:
        msg = f"{sink.target()}: the input has no rows, so nothing was written; add allow_empty: true to the source if an empty input is fine"
        raise EmbedflowError(msg)
    store.index({c for _n, c, _k in rows if c is not None})
    hits = set() if recompute else {n for n, c, _k in rows if c is not None and c in store.entries}
    committer = StoreSink(store, rows, hits, failures, getattr(sink, "columns", None), commit_rows, commit_seconds)
    if len(hits) < len(rows):
        todo = replace(plan, source=plan.source.with_filter(RowFilter(as_ranges(hits), limit)))
        execute(todo, committer, settings, named=named, progress=progress, failures=failures)
    written, result = write_output(plan, sink, store, rows, committer.unstored, failures, named)
    return Outcome(len(rows), len(hits), written, failures.count, used=[c for _n, c, _k in rows if c is not None], result=result)


def run_cached(plan: Plan, settings: RunSettings, sink: Sink, *, named: bool) -> Any:
    """A sink's run through the result store ``settings.cache`` (``dc.cache(path)``); returns
    what the sink returns."""
    assert settings.cache is not None
    remember_user_site()
    failures = FailureLog(settings.errors, plan.key_column)
    store = ResultStore(settings.cache).open()
    try:
        outcome = run_incremental(plan, settings.but(cache=None), sink, store, failures, named=named, progress=settings.progress)
        if outcome.used is not None:
            store.refer(f"dc.cache {chain_fingerprint(plan)}", outcome.used)
    finally:
        store.close()
        failures.close()
    return outcome.result


class _Counting(Sink):
    """A sink that counts the rows it passes on."""

    def __init__(self, inner: Sink):
        self.inner, self.count = inner, 0
        self.ordered = inner.ordered

    def open(self, context: SinkContext) -> None:
        self.inner.open(context)

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        self.count += len(rows)
        self.inner.write(numbers, rows)

    def close(self) -> Any:
        return self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def target(self) -> Any:
        return self.inner.target()


def content_keys(plan: Plan, limit: int | None = None, files: FileDigests | None = None) -> list[SourceRow]:
    """Each source row's number, content key and output key, in source order (the first
    ``limit`` rows); ``files`` remembers the files hashed."""
    fingerprint = chain_fingerprint(plan).encode()
    columns, whole = file_columns(plan)
    source = plan.source.with_filter(RowFilter((), limit)) if limit is not None else plan.source.with_filter(None)
    out: list[SourceRow] = []
    for part in source.parts():
        for number, row in part:
            if type(row) is BadRow:
                out.append((number, None, str(number)))
                continue
            content = hashlib.blake2b(fingerprint + row_digest(row, columns, whole, files).encode(), digest_size=20).hexdigest()
            try:
                key = row_key(number, row, plan.key_column) or str(number)
            except EmbedflowError:
                key = str(number)
            out.append((number, content, key))
    return out


def file_columns(plan: Plan) -> tuple[set[str], bool]:
    """The columns whose values name files an operator opens (their bytes count in a row's
    content), and whether the row itself is such a path (unnamed rows)."""
    columns: set[str] = set()
    whole = False
    for step in plan.steps:
        if isinstance(step, Apply) and step.target is None:
            cls = operator_class(step)
            if is_operator_class(cls) and cls.opens_files(step.params):
                if step.inputs is None:
                    whole = True
                else:
                    columns.update(step.inputs)
    return columns, whole


class StoreSink(Sink):
    """Commits the rows a run computes to the store, each source row's rows together, every
    ``every_rows`` rows or ``every_seconds`` seconds; a row that failed (in part) is kept for
    this run's output only. When the run ends, a row that gave no row (a filter) is stored as
    such."""

    ordered = False  # set in open: True when a row may come as several

    def __init__(
        self,
        store: ResultStore,
        rows: Sequence[SourceRow],
        hits: set[int],
        failures: FailureLog,
        columns: Sequence[str] | None,
        every_rows: int,
        every_seconds: float,
    ):
        self.store, self.failures, self.columns = store, failures, columns
        self.contents = {n: c for n, c, _k in rows}
        self.todo = [n for n, _c, _k in rows if n not in hits]
        self.every_rows, self.every_seconds = every_rows, every_seconds
        self.buffer: list[tuple[int, Any]] = []
        self.seen: set[int] = set()
        self.committed: set[str] = set()
        self.unstored: dict[int, list[Any]] = {}
        self.last_commit = time.monotonic()

    def open(self, context: SinkContext) -> None:
        super().open(context)
        self.ordered = context.expands

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        kept = select_columns(rows, self.columns) if self.context.named else [{VALUE: row} for row in rows]
        self.buffer.extend(zip(map(int, numbers), kept))
        if len(self.buffer) >= self.every_rows or time.monotonic() - self.last_commit >= self.every_seconds:
            self.commit()

    def commit(self, final: bool = False) -> None:
        """Commit the buffered rows; unless ``final``, the parts of the last source row stay
        buffered (more of them may come), so no row is stored half done."""
        records, self.buffer = self.buffer, []  # taken first: an interrupt cannot commit them twice
        if self.context.expands and not final and records:
            cut = len(records)
            while cut and records[cut - 1][0] == records[-1][0]:
                cut -= 1
            records, self.buffer = records[:cut], records[cut:]
        by_row: dict[int, list[Any]] = {}
        for number, row in records:
            by_row.setdefault(number, []).append(row)
        entries: list[Entry] = []
        for number, parts in by_row.items():
            self.seen.add(number)
            content = self.contents.get(number)
            if content is None or number in self.failures.rows:
                self.unstored.setdefault(number, []).extend(parts)
            elif content not in self.committed:  # a duplicate row shares its twin's entry
                self.committed.add(content)
                entries.extend((content, i, part) for i, part in enumerate(parts))
        self.store.add(entries)
        self.last_commit = time.monotonic()

    def abort(self) -> None:
        """Keep what is finished: the next run reuses it."""
        self.commit()

    def target(self) -> Any:
        return self.store.path  # what a full disk names

    def close(self) -> int:
        self.commit(final=True)
        empty = {}
        for number in self.todo:
            content = self.contents[number]
            if number not in self.seen and number not in self.failures.rows and content is not None and content not in self.committed:
                empty[content] = (content, -1, None)
        self.store.add(list(empty.values()))
        return len(self.seen)


def write_output(
    plan: Plan, sink: Sink, store: ResultStore, rows: Sequence[SourceRow], unstored: dict[int, list[Any]], failures: FailureLog, named: bool
) -> tuple[int, Any]:
    """Every source row's results from the store (or this run's, for a row that failed in
    part), in source order, into ``sink``; returns the rows written and what the sink's close
    returned."""
    key_column, expands = plan.key_column, plan.expands
    sink.open(SinkContext(named=named, key_column=key_column, source=plan.source, expands=expands))
    written = 0
    try:
        for chunk in iter_chunks(list(rows), 1024):
            stored = [(n, c, k) for n, c, k in chunk if n not in unstored and n not in failures.rows and c is not None and c in store.entries]
            found = dict(zip((n for n, _c, _k in stored), store.rows_for([c for _n, c, _k in stored])))
            numbers, out = [], []
            for number, _content, key in chunk:
                parts = unstored[number] if number in unstored else found.get(number, [])
                for i, part in enumerate(parts):
                    if not named:
                        part = part[VALUE]
                    elif key_column is not None and key_column not in part:
                        part[key_column] = f"{key}#{i}" if expands else key
                    numbers.append(number)
                    out.append(part)
            if out:
                with naming(sink):
                    sink.write(numbers, out)
                written += len(out)
        with naming(sink):
            result = sink.close()
    except BaseException:
        sink.abort()
        raise
    return written, result
