"""Exact nearest-neighbour search over vectors held in memory — no database — with the hit
format of ``milvus_search`` (``{"id", "distance", **fields}``, best first), so a pipeline moves
between the two by changing one step. Saved as a Parquet file (the vectors and the fields
beside them), which any ``to_parquet`` / ``sink: {parquet: ...}`` run also writes.

Metrics: ``cosine`` (distance = cosine similarity, higher first), ``ip`` (inner product,
higher first), ``l2`` (Euclidean distance, lower first). A query is one matrix product with all
the stored vectors (BLAS), then a partial sort: exact, and fast up to a few million vectors.

>>> import numpy as np
>>> index = VectorIndex(np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), [{"name": n} for n in "abc"])
>>> [(h["id"], h["name"], round(h["distance"], 3)) for h in index.search(np.array([[1.0, 0.1]]), limit=2)[0]]
[(0, 'a', 0.995), (2, 'c', 0.774)]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EmbedflowError
from .files import AtomicFile

if TYPE_CHECKING:
    import numpy as np

METRICS = ("cosine", "ip", "l2")


def check_metric(metric: str) -> str:
    """``metric`` in lower case (Milvus spells them COSINE, IP, L2), or a clear error."""
    lowered = str(metric).lower()
    if lowered not in METRICS:
        msg = f"metric={metric!r} is not one of 'cosine', 'ip', 'l2'"
        raise ValueError(msg)
    return lowered


class VectorIndex:
    """Vectors (n x dim) and, per vector, the fields a hit returns; ``search`` finds the
    nearest stored vectors of each query. ``id`` of a hit is the vector's row in the index."""

    def __init__(self, vectors: Any, fields: Sequence[dict[str, Any]] | None = None, metric: str = "cosine"):
        import numpy as np

        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2:
            msg = f"an index holds a matrix of vectors (n x dim); got shape {matrix.shape}"
            raise EmbedflowError(msg)
        self.metric = check_metric(metric)
        self.vectors = np.ascontiguousarray(matrix)
        self.fields = list(fields) if fields is not None else [{} for _ in range(len(matrix))]
        if len(self.fields) != len(matrix):
            msg = f"an index needs one fields entry per vector: {len(self.fields)} for {len(matrix)} vectors"
            raise EmbedflowError(msg)
        self._unit = _normalized(self.vectors) if self.metric == "cosine" else self.vectors
        self._squares = (self.vectors**2).sum(1) if self.metric == "l2" else None

    def __len__(self) -> int:
        return len(self.vectors)

    def __repr__(self) -> str:
        keys = sorted(self.fields[0]) if self.fields else []
        return f"VectorIndex({len(self)} vectors of {self.vectors.shape[1]}, metric={self.metric!r}, fields={keys})"

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def search(self, queries: Any, limit: int = 5) -> list[list[dict[str, Any]]]:
        """The ``limit`` nearest stored vectors of each query (a vector or a matrix of them)."""
        import numpy as np

        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            msg = f"a query has {q.shape[1]} dimensions, the index holds vectors of {self.dim}; embed queries with the model that built the index"
            raise EmbedflowError(msg)
        if self.metric == "cosine":
            scores = _normalized(q) @ self._unit.T
        elif self.metric == "ip":
            scores = q @ self.vectors.T
        else:  # l2: the smallest distance first; rank on its negative square
            scores = -((q**2).sum(1, keepdims=True) - 2 * q @ self.vectors.T + self._squares)
        k = min(limit, len(self))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(self) else np.tile(np.arange(len(self)), (len(q), 1))
        hits = []
        for row, candidates in zip(scores, top):
            ranked = candidates[np.argsort(-row[candidates], kind="stable")]
            values = np.sqrt(np.maximum(-row[ranked], 0)) if self.metric == "l2" else row[ranked]
            hits.append([{"id": int(i), "distance": float(v), **self.fields[i]} for i, v in zip(ranked, values)])
        return hits

    def save(self, path: str | os.PathLike[str], vector: str = "vec") -> Path:
        """Write the index as a Parquet file (``vector`` column + the fields); it appears whole."""

        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {name: [f.get(name) for f in self.fields] for name in (self.fields[0] if self.fields else {})}
        flat = pa.array(self.vectors.reshape(-1), pa.float32())
        table = pa.table({vector: pa.FixedSizeListArray.from_arrays(flat, self.dim), **columns})
        target = AtomicFile(Path(path))
        try:
            pq.write_table(table, target.tmp)
            target.commit()
        except BaseException:
            target.discard()
            raise
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], vector: str = "vec", fields: Sequence[str] | None = None, metric: str = "cosine") -> VectorIndex:
        """An index from a Parquet file: the ``vector`` column and ``fields`` (default: every
        other column) — a file ``to_parquet`` or a pipeline's parquet sink wrote."""
        import pyarrow.parquet as pq

        if not Path(path).is_file():
            msg = f"index file {str(path)!r} does not exist; build it first (dc.to_index(...).save(path), or a pipeline with a parquet sink)"
            raise EmbedflowError(msg)
        schema = pq.read_schema(path)
        if vector not in schema.names:
            msg = f"index file {str(path)!r} has no column {vector!r} (columns: {schema.names}); name the vector column with vector="
            raise EmbedflowError(msg)
        keep = [c for c in (fields if fields is not None else schema.names) if c != vector]
        missing = [c for c in keep if c not in schema.names]
        if missing:
            msg = f"index file {str(path)!r} has no column {missing[0]!r} (columns: {schema.names})"
            raise EmbedflowError(msg)
        table = pq.read_table(path, columns=[vector, *keep])
        column = table.column(vector).combine_chunks()
        matrix = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
        rows = table.select(keep).to_pylist()
        return cls(matrix, rows, metric)


def _normalized(matrix: np.ndarray) -> np.ndarray:
    import numpy as np

    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
