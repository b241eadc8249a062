"""A pipeline file (or a chain) as an HTTP service: the file's source is replaced by the
requests' rows and its sink is ignored; the sink's ``columns`` say what a response holds.

>>> served(read_pipeline("pipelines/text_search.yaml"))
{'name': 'text-search', 'outputs': ('query', 'hits'), 'model': 'sentence-transformers/all-MiniLM-L6-v2'}
"""

from __future__ import annotations

import os
from typing import Any

from ..plan import Apply
from ..serve import Limits
from ..serve import serve as serve_collection
from .schema import Pipeline, read_pipeline


def served(pipeline: Pipeline) -> dict[str, Any]:
    """What the server says of a pipeline file: its name, the columns a response holds (the
    sink's ``columns``; all when it names none) and its model (the first ``model_name``)."""
    sink = pipeline.sink
    outputs = sink.columns if sink is not None and sink.columns else None
    model = next((s.params["model_name"] for s in pipeline.collection.plan.steps if isinstance(s, Apply) and "model_name" in s.params), None)
    return {"name": pipeline.name, "outputs": outputs, "model": model}


def serve_pipeline(pipeline: Pipeline, *, limits: Limits | None = None, **options: Any) -> None:
    """Serve ``pipeline`` (see :func:`embedflow.serve.serve` for the options)."""
    serve_collection(pipeline.collection, limits=limits, **served(pipeline), **options)


def serve(target: Any, params: dict[str, Any] | None = None, **options: Any) -> None:
    """Serve a pipeline file (``target`` a path, ``params`` its parameters) or a chain (a
    DataCollection whose source the requests replace) until SIGTERM or Ctrl-C.

    Options: ``host``, ``port`` (0: any free port), ``device``, ``max_batch_size``,
    ``max_wait_ms``, ``max_queue``, ``limits`` (``embedflow.serve.Limits``), ``files_root``.
    """
    if isinstance(target, (str, os.PathLike)):
        serve_pipeline(read_pipeline(target, **(params or {})), **options)
    else:
        target.serve(**options)
