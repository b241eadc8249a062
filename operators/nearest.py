"""``nearest``: the nearest stored vectors of each query vector, from an index in memory —
exact search, no database; the hits look like ``milvus_search``'s, so a pipeline switches
between the two by changing one step.

>>> import embedflow as ef, numpy as np
>>> index = ef.dc["v", "name"]([(np.array([1.0, 0.0]), "x"), (np.array([0.0, 1.0]), "y")]).to_index(vector="v")
>>> ef.dc([np.array([0.9, 0.1])]).nearest(index=index, limit=1).to_list()
[[{'id': 0, 'distance': 0.9938837289810181, 'name': 'x'}]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedflow import Operator
from embedflow.io.vector_index import VectorIndex, check_metric


class Nearest(Operator):
    """Search an in-memory index with each row's vector; returns its hits, best first.

    Parameters:
        index: a ``VectorIndex`` (``dc.to_index(...)``, ``ef.load_index(path)``) or the path of
            a Parquet file holding the vectors (what ``to_parquet`` or a parquet sink writes).
        limit: how many hits per query (default 5).
        vector: the vector column of an index file (default ``vec``).
        fields: the columns of an index file a hit returns (default: all the others).
        metric: ``cosine`` (default), ``ip`` or ``l2`` (Milvus' ``COSINE``/``IP``/``L2`` too),
            for an index file.

    Each result is a list of dicts ``{"id", "distance", **fields}``: ``id`` is the vector's row
    in the index; ``distance`` the cosine similarity (or inner product; for ``l2`` the Euclidean
    distance, smallest first).
    """

    batchable = True  # queries batched: one matrix product per batch
    default_batch_size = 256

    def __init__(self, index: Any, limit: int = 5, vector: str = "vec", fields: list[str] | None = None, metric: str = "cosine"):
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            msg = f"nearest: limit={limit!r} must be a positive integer"
            raise ValueError(msg)
        if not isinstance(index, (VectorIndex, str)) and not hasattr(index, "__fspath__"):
            msg = f"nearest: index={index!r} must be a VectorIndex or the path of an index file (.parquet)"
            raise ValueError(msg)
        self.index, self.limit, self.vector, self.fields, self.metric = index, limit, vector, fields, check_metric(metric)

    def setup(self, device: str) -> None:
        if not isinstance(self.index, VectorIndex):
            self.index = VectorIndex.load(self.index, self.vector, self.fields, self.metric)

    def preprocess(self, vector: Any) -> np.ndarray:
        return np.asarray(vector, dtype=np.float32).ravel()

    def collate(self, items: list[np.ndarray]) -> np.ndarray:
        return np.stack(items)

    def forward(self, batch: np.ndarray) -> list[list[dict[str, Any]]]:
        return self.index.search(batch, self.limit)

    def postprocess(self, output: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return output
