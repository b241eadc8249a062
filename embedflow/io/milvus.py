"""Milvus as a sink: a local file path is Milvus Lite (embedded, nothing to start); an
``http://host:19530`` URI is a Milvus server. Needs ``pip install 'embedflow[milvus]'``.

Rows are upserted by primary key (the row key: see :mod:`.keys`), so writing the same rows
again replaces them instead of duplicating them. The collection is created on the first
write with the vectors' dimension and the metric (``COSINE`` by default: right for
normalised vectors).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import EmbedflowError, PlanError
from .files import plain_value
from .keys import PartKeys, row_key
from .sinks import Sink, SinkContext
from .vector_index import check_metric as check_index_metric

INSTALL_HINT = "Milvus support needs pymilvus and Milvus Lite, which are not installed: pip install 'embedflow[milvus]'"


def client(uri: str | os.PathLike[str], token: str | None = None) -> Any:
    """A ``pymilvus.MilvusClient``: a file path opens (or creates) a Milvus Lite database."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise PlanError(INSTALL_HINT) from exc
    text = os.fspath(uri)
    if "://" not in text:
        os.makedirs(os.path.dirname(os.path.abspath(text)) or ".", exist_ok=True)
    try:
        return MilvusClient(uri=text, token=token or os.environ.get("MILVUS_TOKEN", ""))
    except Exception as exc:
        msg = f"milvus: cannot connect to {text!r}: {exc}. Check the address (a Milvus Lite file path, or http://host:19530) and that the server runs"
        raise EmbedflowError(msg) from exc


def check_metric(metric: str) -> str:
    """The metric as Milvus spells it (upper case), or an error listing the valid ones — the
    same metrics as the in-memory index's."""
    try:
        return check_index_metric(metric).upper()
    except ValueError as exc:
        raise PlanError(f"milvus: {exc}") from None


class MilvusSink(Sink):
    """Upserts rows into a collection in batches; ``close`` returns the rows written.

    ``vector`` is the vector column; ``fields`` the scalar columns stored beside it (default:
    every scalar column); ``key`` overrides the row key column.
    """

    ordered = False  # upserts by key: any order gives the same collection

    def __init__(
        self,
        uri: str | os.PathLike[str],
        collection: str,
        vector: str = "vec",
        fields: Sequence[str] | None = None,
        metric: str = "COSINE",
        key: str | None = None,
        batch_size: int = 256,
        mirror: bool = False,
    ):
        self.uri, self.collection, self.vector = os.fspath(uri), collection, vector
        self.mirror = mirror  # close() deletes the entities whose keys this run did not write
        self.deleted = 0
        self.fields = tuple(fields) if fields is not None else None
        self.metric = check_metric(metric)
        self.key = key
        self.batch_size = batch_size
        self.count = 0

    def open(self, context: SinkContext) -> None:
        super().open(context)
        if not context.named:
            msg = "milvus needs named rows: name the columns, e.g. ef.dc['text'](...) ... ['text', 'vec']"
            raise EmbedflowError(msg)
        # a server is asked at once (a wrong address fails before any model loads); a Milvus Lite
        # file is made with the first rows, so a run that fails before them leaves no database
        self.client: Any = client(self.uri) if "://" in self.uri else None
        self.pending: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}
        self.parts = PartKeys()

    def source_rows(self) -> set[int]:
        """The source row numbers written (several rows may come of one)."""
        return set(self.seen.values())

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        key_column = self.key or self.context.key_column
        for number, row in zip(numbers, rows):
            key = row_key(number, row, key_column) or ""
            if self.context.expands:  # the parts of one row: each its own entity
                key = self.parts.key(number, key)
            first = self.seen.setdefault(key, number)
            if first != number:  # an upsert would silently replace the earlier row
                msg = f"milvus: rows {first} and {number} have the same key {key_column}={key!r}; a key must identify one row (make it unique, or pass another key column)"
                raise EmbedflowError(msg)
            self._add(key, row)

    def _add(self, key: str, row: dict[str, Any]) -> None:
        import numpy as np

        if self.vector not in row:
            msg = f"milvus: no vector column {self.vector!r} in the rows (columns: {list(row)}); set vector: <column>"
            raise EmbedflowError(msg)
        vec = np.asarray(plain_value(row[self.vector]), dtype=np.float32).ravel()
        entity: dict[str, Any] = {"id": key, "vector": vec.tolist()}
        for name in self.fields if self.fields is not None else [c for c in row if c != self.vector]:
            value = plain_value(row[name])
            if isinstance(value, (str, int, float, bool)) or value is None:
                entity[name] = value
        self.pending.append(entity)
        if len(self.pending) >= self.batch_size:
            self._flush()

    def _ensure(self, dim: int) -> None:
        if self.client.has_collection(self.collection):
            info = self.client.describe_collection(self.collection)
            have = next((f["params"].get("dim") for f in info["fields"] if f["name"] == "vector"), None)
            if have is not None and int(have) != dim:
                msg = f"milvus: collection {self.collection!r} at {self.uri} holds {have}-d vectors, these are {dim}-d; use another collection"
                raise EmbedflowError(msg)
            return
        self.client.create_collection(
            self.collection,
            dimension=dim,
            metric_type=self.metric,
            id_type="string",
            max_length=2048,
            auto_id=False,
            enable_dynamic_field=True,
        )

    def target(self) -> Any:
        return self.uri

    def _connected(self) -> Any:
        if self.client is None:
            self.client = client(self.uri)
        return self.client

    def _flush(self) -> None:
        if not self.pending:
            return
        self._connected()
        self._ensure(len(self.pending[0]["vector"]))
        self.client.upsert(self.collection, self.pending)
        self.count += len(self.pending)
        self.pending = []

    def close(self) -> int:
        try:
            self._flush()
            self._connected()  # a finished run leaves its database, even an empty one
            if self.mirror:
                self._delete_others()
        finally:
            if self.client is not None:
                self.client.close()
        return self.count

    def _delete_others(self) -> None:
        """Delete the entities whose keys this run did not write: the collection then mirrors
        the input (an incremental run writes every row of it)."""
        if not self.client.has_collection(self.collection):
            return
        found = self.client.query_iterator(self.collection, batch_size=1000, filter='id != ""', output_fields=["id"])
        stale: list[str] = []
        try:
            while batch := found.next():
                stale.extend(r["id"] for r in batch if r["id"] not in self.seen)
        finally:
            found.close()
        for start in range(0, len(stale), 1000):
            self.client.delete(self.collection, ids=stale[start : start + 1000])
        self.deleted = len(stale)

    def abort(self) -> None:
        """Upserts are idempotent: keep what was written, send what is pending."""
        try:
            self._flush()
        finally:
            if self.client is not None:
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
