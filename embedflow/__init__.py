"""embedflow: turn images, text and anything an operator reads into embedding vectors.

>>> import embedflow as ef
>>> ef.dc(["a", "bb"]).map(len).to_list()
[1, 2]
"""

from __future__ import annotations

from .dsl import DataCollection, dc, glob, read_csv, read_jsonl, read_parquet, read_text
from .errors import (
    ColumnError,
    DeviceError,
    EmbedflowError,
    ItemError,
    ModelNotFoundError,
    OperatorLoadError,
    ParameterError,
    PipelineError,
    PlanError,
    UnknownOperatorError,
)
from .io.vector_index import VectorIndex
from .models import allow_import, resolve_model
from .operator import Operator
from .pipelines import load_pipeline, pipeline, serve
from .registry import get_operator, list_operators, register
from .samples import SAMPLES as samples

__version__ = "0.1.0"
load_index = VectorIndex.load  # ef.load_index("photos.parquet"): an index saved by VectorIndex.save or a parquet sink

__all__ = [
    "ColumnError",
    "DataCollection",
    "DeviceError",
    "EmbedflowError",
    "ItemError",
    "ModelNotFoundError",
    "Operator",
    "OperatorLoadError",
    "ParameterError",
    "PipelineError",
    "PlanError",
    "UnknownOperatorError",
    "VectorIndex",
    "__version__",
    "allow_import",
    "dc",
    "get_operator",
    "glob",
    "list_operators",
    "load_index",
    "load_pipeline",
    "pipeline",
    "read_csv",
    "read_jsonl",
    "read_parquet",
    "read_text",
    "register",
    "resolve_model",
    "samples",
    "serve",
]
