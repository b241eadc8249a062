"""``milvus_search``: the nearest stored vectors of each query vector, from Milvus.

>>> import embedflow as ef
>>> ef.dc([[1.0, 0.0]]).milvus_search(uri="x.db", collection="c").explain().splitlines()[-1]
"  1 op     milvus_search(uri='x.db', collection='c')"
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from embedflow import Operator
from embedflow.errors import EmbedflowError
from embedflow.io.milvus import client, search


class MilvusSearch(Operator):
    """Search a Milvus collection with each row's vector; returns its hits, best first.

    Parameters:
        uri: a Milvus Lite file (``out/vectors.db``) or a server (``http://host:19530``).
        collection: the collection to search.
        limit: how many hits per query (default 5).
        fields: stored fields to return with each hit (default: all).

    Each result is a list of dicts ``{"id", "distance", **fields}``; with the ``COSINE`` metric
    the distance is the cosine similarity (1.0 for the same direction).
    """

    threaded = False  # one client, used in order

    def __init__(self, uri: str, collection: str, limit: int = 5, fields: list[str] | None = None):
        if not isinstance(limit, int) or limit < 1:
            msg = f"milvus_search: limit={limit!r} must be a positive integer"
            raise ValueError(msg)
        self.uri, self.collection, self.limit, self.fields = str(uri), collection, limit, fields
        self._client: Any = None

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """A local database that does not exist yet is an index run that has not happened."""
        uri = str(params.get("uri", ""))
        if uri and "://" not in uri and not os.path.exists(uri):
            msg = (
                f"milvus_search: the database {uri!r} does not exist yet (searched from {os.getcwd()}). "
                "Fix: run the pipeline that indexes into it first (`embedflow pipelines` lists the *-index ones), "
                "or give the uri of an existing database"
            )
            raise EmbedflowError(msg)

    def setup(self, device: str) -> None:
        self._client = client(self.uri)
        if not self._client.has_collection(self.collection):
            have = ", ".join(self._client.list_collections()) or "none"
            msg = f"milvus_search: no collection {self.collection!r} at {self.uri} (collections: {have}); index some rows first"
            raise ValueError(msg)
        self._client.load_collection(self.collection)  # a reopened database starts released

    def preprocess(self, vector: Any) -> list[dict[str, Any]]:
        if self._client is None:
            self.setup("cpu")
        vec = np.asarray(vector, dtype=np.float32).ravel().tolist()
        return search(self._client, self.collection, [vec], self.limit, self.fields)[0]
