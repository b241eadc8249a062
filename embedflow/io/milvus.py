"""Milvus as a sink: a local file path is Milvus Lite (embedded, nothing to start); an
``http://host:19530`` URI is a Milvus server. Needs ``pip install 'embedflow[milvus]'``.

Rows are upserted by primary key (the row key), so writing the same rows again replaces them
instead of duplicating them. The collection is created on the first write with the vectors'
dimension and the metric (``COSINE`` by default: right for normalised vectors).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import EmbedflowError, PlanError
from .writers import plain_value

INSTALL_HINT = "Milvus support needs pymilvus and Milvus Lite, which are not installed: pip install 'embedflow[milvus]'"
METRICS = ("COSINE", "IP", "L2")


def client(uri: str | os.PathLike[str], token: str | None = None) -> Any:
    """A ``pymilvus.MilvusClient``: a file path opens (or creates) a Milvus Lite database."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise PlanError(INSTALL_HINT) from exc
    text = os.fspath(uri)
    if "://" not in text:
        os.makedirs(os.path.dirname(os.path.abspath(text)) or ".", exist_ok=True)
    return MilvusClient(uri=text, token=token or os.environ.get("MILVUS_TOKEN", ""))


class MilvusWriter:
    """Upserts rows into a collection in batches."""

    def __init__(self, uri: str, collection: str, vector: str = "vec", fields: Sequence[str] | None = None, metric: str = "COSINE", batch_size: int = 256):
        metric = metric.upper()
        if metric not in METRICS:
            msg = f"milvus: metric={metric!r} is not one of {', '.join(METRICS)}"
            raise PlanError(msg)
        self.client = client(uri)
        self.uri, self.collection, self.vector, self.fields, self.metric = str(uri), collection, vector, fields, metric
        self.batch_size = batch_size
        self.pending: list[dict[str, Any]] = []
        self.written = 0

    def _ensure(self, dim: int) -> None:
        if self.client.has_collection(self.collection):
            info = self.client.describe_collection(self.collection)
            have = next((f["params"].get("dim") for f in info["fields"] if f["name"] == "vector"), None)
            if have is not None and int(have) != dim:
                msg = f"milvus: collection {self.collection!r} at {self.uri} holds {have}-d vectors, these are {dim}-d; use another collection"
                raise EmbedflowError(msg)
            return
        self.client.create_collection(
            self.collection, dimension=dim, metric_type=self.metric, id_type="string", max_length=2048,
            auto_id=False, enable_dynamic_field=True,
        )

    def add(self, key: str, row: dict[str, Any]) -> None:
        if self.vector not in row:
            msg = f"milvus: no vector column {self.vector!r} in the rows (columns: {list(row)}); set vector: <column>"
            raise EmbedflowError(msg)
        vec = np.asarray(row[self.vector], dtype=np.float32).ravel()
        entity = {"id": str(key), "vector": vec.tolist()}
        for name in self.fields if self.fields is not None else [c for c in row if c != self.vector]:
            value = plain_value(row[name])
            if isinstance(value, (str, int, float, bool)) or value is None:
                entity[name] = value
        self.pending.append(entity)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self._ensure(len(self.pending[0]["vector"]))
        self.client.upsert(self.collection, self.pending)
        self.written += len(self.pending)
        self.pending = []

    def close(self) -> None:
        self.flush()
        self.client.close()


def search(cl: Any, collection: str, vectors: list[list[float]], limit: int, fields: Sequence[str] | None) -> list[list[dict[str, Any]]]:
    """For each query vector, its hits as ``{"id", "distance", **fields}``, best first."""
    results = cl.search(collection, data=vectors, limit=limit, output_fields=list(fields) if fields else ["*"])
    out = []
    for hits in results:
        rows = []
        for hit in hits:
            entity = dict(hit.get("entity", {}))
            entity.pop("vector", None)
            rows.append({"id": hit["id"], "distance": float(hit["distance"]), **entity})
        out.append(rows)
    return out
