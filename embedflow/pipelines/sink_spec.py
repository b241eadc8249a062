"""A pipeline file's ``sink:`` as data: what kind of output, where, and with which options.

>>> SinkSpec("parquet", "out/v.parquet").output
PosixPath('out/v.parquet')
>>> SinkSpec("parquet", "s3://bucket/v.parquet").output
's3://bucket/v.parquet'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..io.remote import is_remote
from ..models import cache_dir


@dataclass(frozen=True)
class SinkSpec:
    """Where a pipeline's rows go: ``kind`` is parquet, jsonl or npy."""

    kind: str
    target: str  # the output file; for milvus the URI (a Milvus Lite file or http://...)
    columns: tuple[str, ...] | None = None  # parquet/jsonl/print: the columns to keep (default all)
    column: str | None = None  # npy: the vector column
    collection: str | None = None  # milvus
    vector: str = "vec"  # milvus: the vector column
    fields: tuple[str, ...] | None = None  # milvus: scalar columns stored beside the vector
    metric: str = "COSINE"  # milvus

    @property
    def path(self) -> Path:
        """The output file (for a Milvus Lite database, its file); for a file at a URL
        (``s3://...``), the local place of its run's result store and lock."""
        if self.kind in ("parquet", "jsonl", "npy") and is_remote(self.target):
            digest = hashlib.sha256(self.target.encode()).hexdigest()[:16]
            return cache_dir() / "remote-outputs" / digest / self.target.rstrip("/").rsplit("/", 1)[-1]
        return Path(self.target)

    @property
    def output(self) -> str | Path:
        """Where a file sink writes: the URL itself, or the local path."""
        return self.target if is_remote(self.target) else Path(self.target)

    @property
    def remote(self) -> bool:
        """A server URI (``http://host:19530``), not a file."""
        return "://" in self.target
