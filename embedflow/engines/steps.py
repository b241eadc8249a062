"""Chunk-wise implementations of the cheap steps, shared by every engine.

A chunk is ``(numbers, rows)``: the source row numbers (kept for error messages, ``.safe()``
records and resume) and the rows. Each function takes an iterator of chunks and yields
chunks; :func:`run_cheap` composes a cheap stage's steps through one table.

>>> from embedflow.plan import Head
>>> list(head_rows(Head(n=3), iter([(range(0, 2), ["a", "b"]), (range(2, 4), ["c", "d"])])))
[(range(0, 2), ['a', 'b']), (range(2, 3), ['c'])]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import EmbedflowError, ItemError
from ..hooks import PreparesInBatches
from ..io.readers import BadRow
from ..operator import FunctionOperator, Operator
from ..plan import Apply, Batch, Filter, FlatMap, Group, Head, Project, Step, Whole
from ..rows import missing_column, read_inputs, write_outputs
from .failures import Failure, FailureLog
from .preprocess import Raised, input_tuples, preprocess_items

Chunk = tuple[Sequence[int], list[Any]]


class _Skipped:
    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED = _Skipped()  # the result of an item that failed under .safe()


class Guard:
    """Applies a step's error policy to one failed item."""

    def __init__(self, on_error: str, label: str, failures: FailureLog):
        self.skip = on_error == "skip"
        self.label = label
        self.failures = failures

    @classmethod
    def of(cls, step: Step, failures: FailureLog) -> Guard:
        return cls(step.on_error, step.label, failures)

    def handle(self, number: int | None, item: Any, exc: Exception) -> Any:
        """Return SKIPPED after recording the failure (``.safe()``), else raise ItemError."""
        if isinstance(exc, ItemError):
            raise exc
        if self.skip:
            self.failures.record(Failure.of(self.label, number, item, exc, self.failures.key_of(number, item)))
            return SKIPPED
        raise ItemError(self.label, number, item, exc) from exc


def drop_bad_rows(numbers: Sequence[int], rows: list[Any], on_error: str, label: str, failures: FailureLog) -> Chunk:
    """A source chunk without the rows its reader could not read: each is recorded under
    ``skip``, else its error (which names file and line) is raised."""
    if not any(type(r) is BadRow for r in rows):
        return numbers, rows
    out_numbers, out_rows = [], []
    for number, row in zip(numbers, rows):
        if type(row) is not BadRow:
            out_numbers.append(number)
            out_rows.append(row)
        elif on_error == "skip":
            failures.record(Failure.of(label, number, row.raw, row.error, str(number)))
        else:
            raise row.error
    return out_numbers, out_rows


def drop_skipped(keys: Sequence[int], rows: list[Any]) -> Chunk:
    """The chunk without the rows that failed under ``.safe()``."""
    if not any(r is SKIPPED for r in rows):
        return keys, rows
    kept = [(k, r) for k, r in zip(keys, rows) if r is not SKIPPED]
    return [k for k, _ in kept], [r for _, r in kept]


def item_applier(step: Apply, op: Operator, failures: FailureLog) -> Callable[[Sequence[int], list[Any]], list[Any]]:
    """How a per-item step turns rows into its output rows: ``preprocess_batch``, else item by
    item, each output written into its row; a row that fails is :data:`SKIPPED` and recorded
    under ``.safe()``, else raises naming it. The one routine for the calling thread
    (:func:`apply_items`), the local engine's pool threads and the server's.

    >>> import embedflow as ef
    >>> from embedflow.plan import Apply
    >>> step = ef.dc([1]).safe().map(lambda x: 10 // x).plan.steps[0]
    >>> item_applier(step, step.target, FailureLog())([0, 1], [5, 0])
    [2, SKIPPED]
    """
    guard = Guard.of(step, failures)
    inputs, outputs = step.inputs, step.outputs

    def written(key: int, row: Any, item: Any) -> Any:
        try:
            if isinstance(item, Raised):
                raise item.error
            return write_outputs(row, inputs, outputs, item)
        except Exception as exc:  # noqa: BLE001 - the step's policy decides
            return guard.handle(key, row, exc)

    def apply(keys: Sequence[int], rows: list[Any]) -> list[Any]:
        items = preprocess_items(op, input_tuples(rows, inputs))
        return [written(k, r, item) for k, r, item in zip(keys, rows, items)]

    return apply


def apply_items(step: Apply, op: Operator, chunks: Iterator[Chunk], failures: FailureLog) -> Iterator[Chunk]:
    """A per-item operator (or ``.map`` function) in the calling thread."""
    apply = item_applier(step, op, failures)
    preprocess = op.preprocess
    if isinstance(op, FunctionOperator) and not op.params:
        preprocess = op.fn  # skip the adapter's call layer on the per-row hot path
    fast = not isinstance(op, PreparesInBatches) and step.inputs is None and step.on_error != "skip"
    for keys, rows in chunks:
        if fast:
            try:  # the fast path: one comprehension per chunk
                yield keys, [preprocess(row) for row in rows]
                continue
            except Exception:  # noqa: BLE001, S110 - find the failing row and raise with it
                pass
        yield drop_skipped(keys, apply(keys, rows))


def filter_rows(step: Filter, chunks: Iterator[Chunk], failures: FailureLog) -> Iterator[Chunk]:
    guard = Guard.of(step, failures)
    for keys, rows in chunks:
        out_keys, out_rows = [], []
        for key, row in zip(keys, rows):
            try:
                keep = step.fn(*read_inputs(row, step.inputs))
            except Exception as exc:  # noqa: BLE001
                guard.handle(key, row, exc)
                continue
            if keep:
                out_keys.append(key)
                out_rows.append(row)
        yield out_keys, out_rows


def flat_map_rows(step: FlatMap, chunks: Iterator[Chunk], failures: FailureLog) -> Iterator[Chunk]:
    guard = Guard.of(step, failures)
    for keys, rows in chunks:
        out_keys: list[int] = []
        out_rows: list[Any] = []
        for key, row in zip(keys, rows):
            try:
                produced = [write_outputs(row, step.inputs, step.outputs, v) for v in step.fn(*read_inputs(row, step.inputs))]
            except Exception as exc:  # noqa: BLE001
                guard.handle(key, row, exc)
                continue
            out_keys.extend([key] * len(produced))
            out_rows.extend(produced)
        yield out_keys, out_rows


def batch_rows(step: Batch, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    group_key, group = 0, list[Any]()
    for keys, rows in chunks:
        out_keys, out_rows = [], []
        for key, row in zip(keys, rows):
            if not group:
                group_key = key
            group.append(row)
            if len(group) == step.size:
                out_keys.append(group_key)
                out_rows.append(group)
                group = []
        yield out_keys, out_rows
    if group:
        yield [group_key], [group]


def group_rows(step: Group, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Consecutive rows with the same ``step.by`` value as one row (see :class:`Group`)."""
    number, group, done = 0, list[Any](), object()
    current: Any = done
    for keys, rows in chunks:
        out_keys, out_rows = [], []
        for key, row in zip(keys, rows):
            value = key if step.by is None else read_inputs(row, (step.by,))[0]
            if group and value != current:
                out_keys.append(number)
                out_rows.append(_joined(step, group))
                group = []
            if not group:
                number, current = key, value
            group.append(row)
        yield out_keys, out_rows
    if group:
        yield [number], [_joined(step, group)]


def _joined(step: Group, rows: list[Any]) -> Any:
    values = [row[step.column] for row in rows] if step.column else rows  # unnamed rows: the rows themselves
    if step.reduce == "list":
        joined: Any = values
    elif step.reduce == "first":
        joined = values[0]
    else:
        import numpy as np

        joined = np.mean(np.stack([np.asarray(v, dtype=np.float32) for v in values]), axis=0)
    return {**rows[0], step.column: joined} if step.column else joined


def head_rows(step: Head, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    left = step.n
    if left <= 0:
        return
    for keys, rows in chunks:
        if len(rows) >= left:
            yield keys[:left], rows[:left]
            return
        left -= len(rows)
        yield keys, rows


def project_rows(step: Project, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    cols = step.columns
    for keys, rows in chunks:
        if step.keep:
            try:
                new = [{c: row[c] for c in cols} for row in rows]
            except KeyError as exc:
                bad = next(row for row in rows if exc.args[0] not in row)
                raise missing_column(exc.args[0], bad) from None
        else:
            new = [{k: v for k, v in row.items() if k not in cols} for row in rows]
        yield keys, new


def whole_rows(step: Whole, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Gather every row, apply the step's function once, emit the result as one chunk."""
    keys: list[int] = []
    rows: list[Any] = []
    for k, r in chunks:
        keys.extend(k)
        rows.extend(r)
    out = step.fn(rows)
    if len(out) != len(rows):
        msg = f"{step.name}: returned {len(out)} rows for {len(rows)}"
        raise ValueError(msg)
    yield keys, out


def run_cheap(steps: Sequence[Step], ops: dict[int, Operator], chunks: Iterator[Chunk], failures: FailureLog) -> Iterator[Chunk]:
    """The chunks after a cheap stage's steps; ``ops`` holds the operator of each Apply step
    (by ``id(step)``)."""
    for step in steps:
        if isinstance(step, Apply):
            chunks = apply_items(step, ops[id(step)], chunks, failures)
        elif isinstance(step, Filter):
            chunks = filter_rows(step, chunks, failures)
        elif isinstance(step, FlatMap):
            chunks = flat_map_rows(step, chunks, failures)
        elif isinstance(step, Batch):
            chunks = batch_rows(step, chunks)
        elif isinstance(step, Group):
            chunks = group_rows(step, chunks)
        elif isinstance(step, Head):
            chunks = head_rows(step, chunks)
        elif isinstance(step, Project):
            chunks = project_rows(step, chunks)
        else:
            msg = f"a {type(step).__name__} step cannot run in a cheap stage"
            raise EmbedflowError(msg)
    return chunks
