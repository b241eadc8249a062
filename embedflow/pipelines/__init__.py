"""Pipeline files: the YAML schema (:mod:`.schema`), the line-aware safe loader, and the
runner that takes a file to its sink with resume (:mod:`.runner`).

>>> from embedflow.pipelines import read_pipeline
>>> read_pipeline("pipelines/text_embedding.yaml").sink.kind
'parquet'
"""

from __future__ import annotations

from .catalog import pipelines
from .checks import preflight
from .function import PipelineFunction, pipeline
from .runner import RunSummary, run_pipeline
from .schema import Pipeline, SinkSpec, load_pipeline, read_pipeline
from .serving import serve, serve_pipeline

__all__ = [
    "Pipeline",
    "PipelineFunction",
    "pipeline",
    "pipelines",
    "RunSummary",
    "SinkSpec",
    "load_pipeline",
    "preflight",
    "read_pipeline",
    "run_pipeline",
    "serve",
    "serve_pipeline",
]
