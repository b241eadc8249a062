"""A pipeline as a function: ``p = ef.pipeline("text-embedding"); vec = p("a sentence")``.

The pipeline's source is replaced by what the caller passes and its sink is ignored; its steps
run on the local engine as a chain would (batched, sorted by length, decode overlapping the
model), and the models stay loaded between calls: the steps are the same objects each time,
so their loaded operators are reused. A failing item raises its error (naming the item) — the
file's ``on_error: skip`` is for runs of the whole file.

What a call returns: the columns the file's sink keeps, less the ones the caller passed — one
column is returned as its value (``text-embedding``: the vector), several as a dict; without
sink columns, the last step's output.

>>> import embedflow as ef, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "unit.yaml"
>>> _ = path.write_text("source: {items: [], column: v}\\nsteps: [{op: normalize, in: v, out: unit}]\\n")
>>> p = ef.pipeline(path)
>>> p
PipelineFunction('unit', inputs=('v',), returns=('unit',))
>>> p([3.0, 4.0]).tolist(), len(p.batch([[1.0, 0.0], [0.0, 2.0]]))
([0.6, 0.8], 2)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice
from typing import Any

from ..engines import stream
from ..errors import UsageError
from ..io.sources import from_iterable
from ..plan import Apply, RunSettings
from .schema import Pipeline, read_pipeline


class PipelineFunction:
    """A pipeline called on items: ``p(x)`` for one, ``p.batch(xs)`` for a list,
    ``p.map(iterable)`` to stream any number (see the module docstring)."""

    def __init__(self, pipeline: Pipeline):
        plan = pipeline.collection.plan
        self.name = pipeline.name or os.path.basename(pipeline.file)
        self.inputs: tuple[str, ...] | None = plan.source.columns if plan.source.named else None
        steps = tuple(replace(step, on_error="raise") for step in plan.steps)  # made once: their models load once
        self._plan = replace(plan, steps=steps)  # run with the default settings: local, no bar, failures raise
        self.returns = _returns(pipeline, self.inputs)

    def __repr__(self) -> str:
        return f"PipelineFunction({self.name!r}, inputs={self.inputs}, returns={self.returns})"

    def __call__(self, item: Any) -> Any:
        """The result for one item (a value for a one-column source, else a dict or tuple)."""
        return self.batch([item])[0]

    def batch(self, items: Iterable[Any]) -> list[Any]:
        """The results for ``items``, in their order."""
        return list(self.map(items))

    def map(self, items: Iterable[Any], chunk_size: int = 4096) -> Iterator[Any]:
        """Results as they are ready, in input order; ``items`` is read ``chunk_size`` at a time,
        so an endless iterable streams with bounded memory."""
        if isinstance(items, (str, bytes, dict)):
            msg = f"{self.name}: map() and batch() take an iterable of items, got one {type(items).__name__}; call the pipeline on it: p(item)"
            raise UsageError(msg)
        source = iter(items)
        while chunk := list(islice(source, chunk_size)):
            plan = replace(self._plan, source=from_iterable(chunk, self.inputs))
            for _numbers, rows in stream(plan, RunSettings(progress=False)):
                yield from (self._pick(row) for row in rows)

    def _pick(self, row: Any) -> Any:
        if self.returns is None or not isinstance(row, dict):
            return row
        if len(self.returns) == 1:
            return row[self.returns[0]]
        return {c: row[c] for c in self.returns}


def _returns(pipeline: Pipeline, inputs: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The columns a call returns: the sink's, less the inputs; else the last step's outputs."""
    sink = pipeline.sink
    if sink is not None and sink.columns:
        kept = tuple(c for c in sink.columns if c not in (inputs or ()))
        if kept:
            return kept
    outputs = next((s.outputs for s in reversed(pipeline.collection.plan.steps) if isinstance(s, Apply) and s.outputs), None)
    return tuple(outputs) if outputs else None


def pipeline(name_or_path: str | os.PathLike[str], **params: Any) -> PipelineFunction:
    """A named pipeline (``embedflow pipelines`` lists them; ``"text-embedding"``,
    ``"image-embedding"``, …) or a YAML file, as a function that keeps its models loaded;
    ``params`` override the file's parameters (``model=...``).

    >>> import embedflow as ef
    >>> ef.pipeline("text-embedding")
    PipelineFunction('text-embedding', inputs=('text',), returns=('vec',))
    """
    return PipelineFunction(read_pipeline(name_or_path, **params))
