"""Checks that run before any work (and in ``embedflow validate``): the input exists and holds
rows, the output can be written, and row keys are unique — so that a mistake costs a second,
not the hours of a job that fails at its end.

>>> import tempfile, os
>>> check_output(os.path.join(tempfile.mkdtemp(), "new", "v.parquet"))
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EmbedflowError
from ..io.keys import row_key
from ..io.overwrite import check_replaceable
from ..io.readers import BadRow
from ..io.remote import check_writable
from ..io.sources import GlobSource, Source
from ..operator import is_operator_class
from ..plan import Apply, operator_class
from .schema import Pipeline

FILE_SINKS = ("parquet", "jsonl", "npy")


def check_output(path: str | os.PathLike[str], database: bool = False, source: Source | None = None) -> None:
    """Fail naming the path and the fix when a file cannot be written at ``path`` (a
    ``database``, such as Milvus Lite's, may be a folder of its own) or writing it would destroy
    something: one of ``source``'s inputs, a device, a FIFO."""
    target = Path(path)
    if target.is_dir() and not database:
        msg = f"output {str(target)!r} is a folder; name a file in it, e.g. {target / ('vectors' + (target.suffix or '.parquet'))}"
        raise EmbedflowError(msg)
    check_replaceable(target, source, database)
    folder = target.parent
    while not folder.exists():  # the nearest folder that exists must let us create the rest
        folder = folder.parent
    if not folder.is_dir():
        msg = f"output {str(target)!r}: {str(folder)!r} is a file, not a folder; choose another output path"
        raise EmbedflowError(msg)
    if not os.access(folder, os.W_OK | os.X_OK):
        msg = f"output {str(target)!r}: the folder {str(folder)!r} is not writable; choose another output path or fix its permissions"
        raise EmbedflowError(msg)
    if target.is_file() and not os.access(target, os.W_OK):
        msg = f"output {str(target)!r} exists and is read-only; remove it or choose another output path"
        raise EmbedflowError(msg)


def preflight(pipeline: Pipeline) -> None:
    """Every check that needs no work: the input (exists, readable, not empty unless allowed,
    a named key unique), what each operator step needs before its first row
    (``Operator.check_params``: a search step's database) and the output (writable). ``run``
    and ``validate`` both make them."""
    plan = pipeline.collection.plan
    plan.source.check()
    if plan.key is not None:
        check_unique_keys(plan.source, plan.key)
    for step in plan.steps:
        if isinstance(step, Apply) and step.target is None:
            kind = operator_class(step)
            if is_operator_class(kind):
                kind.check_params(step.params)
    spec = pipeline.sink
    if spec is None:
        return
    if spec.kind in FILE_SINKS and isinstance(spec.output, str):
        check_writable(spec.output)  # a URL: writable kind, backend installed
    elif spec.kind in FILE_SINKS:
        check_output(spec.path, source=plan.source)
    elif spec.kind == "milvus" and not spec.remote:
        check_output(spec.path, database=True, source=plan.source)


def check_unique_keys(source: Source, column: str) -> None:
    """Read the source once and fail on the first key that two rows share, naming both rows:
    with a duplicate key, one row would overwrite the other (Milvus) or be taken for done
    (resume). A glob's paths are unique by construction."""
    if isinstance(source, GlobSource):
        return
    seen: dict[str, int] = {}
    for part in source.parts():
        for number, row in part:
            if type(row) is BadRow:
                continue  # recorded or raised by the run itself
            key = row_key(number, row, column)
            first = seen.setdefault(key, number)  # type: ignore[arg-type]
            if first != number:
                msg = (
                    f"{source.label}: rows {first} and {number} have the same key {column}={key!r}; a key must identify one "
                    f"row (make the {column!r} values unique, or name another key column with source: key:)"
                )
                raise EmbedflowError(msg)


def schema_columns(pipeline: Pipeline) -> tuple[str, ...] | None:
    """The output's columns when they are known before running (to write an empty output)."""
    spec = pipeline.sink
    if spec is None:
        return None
    if spec.kind == "npy":
        return None
    return spec.columns or pipeline.collection.columns
