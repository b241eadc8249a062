"""Final output files of a pipeline run: Parquet, JSON lines, or ``.npy`` plus a key sidecar.

Every file is written under a temporary name in the same folder and renamed when complete,
so a reader never sees half a file.

>>> import tempfile, pathlib, numpy as np
>>> out = pathlib.Path(tempfile.mkdtemp()) / "v.jsonl"
>>> write_output("jsonl", out, iter([(0, "a", {"v": np.ones(2, np.float32)})]), rows=1)
1
>>> out.read_text().strip()
'{"v": [1.0, 1.0]}'
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbedflowError
from .arrow import as_numpy, rows_to_table

Record = tuple[int, str, dict[str, Any]]  # (source row, row key, row)
ROW_GROUP = 4096


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``target`` (not created: the writer creates it with the
    usual permissions), renamed onto ``target`` when the block succeeds, removed otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def plain_value(value: Any) -> Any:
    """A value JSON and Milvus can store: arrays become lists, numpy scalars and paths plain."""
    value = as_numpy(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_parquet(path: Path, records: Iterator[Record], row_group_rows: int = ROW_GROUP) -> int:
    """Rows as Parquet, in row groups of ``row_group_rows``; vectors as fixed-size lists."""
    import pyarrow.parquet as pq

    count = 0
    with atomic_path(path) as tmp:
        writer = None
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal writer
            table = rows_to_table(batch, named=True)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            elif table.schema != writer.schema:
                table = table.cast(writer.schema)
            writer.write_table(table)

        for _row, _key, row in records:
            batch.append(row)
            count += 1
            if len(batch) >= row_group_rows:
                flush()
                batch = []
        if batch or writer is None:
            if batch:
                flush()
            else:
                import pyarrow as pa

                writer = pq.ParquetWriter(tmp, pa.schema([]))
        writer.close()
    return count


def write_jsonl(path: Path, records: Iterator[Record]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for _row, _key, row in records:
            f.write(json.dumps({k: plain_value(v) for k, v in row.items()}) + "\n")
            count += 1
    return count


def write_npy(path: Path, records: Iterator[Record], rows: int, column: str) -> int:
    """A 2-D array of ``column`` in ``path`` and ``<path>.keys.jsonl``: one line per array row
    with the source row number and the row key."""
    keys_path = path.with_name(path.name + ".keys.jsonl")
    count = 0
    with atomic_path(path) as tmp, atomic_path(keys_path) as tmp_keys, open(tmp_keys, "w", encoding="utf-8") as keys:
        array = None
        for row_number, key, row in records:
            if column not in row:
                msg = f"sink npy: no column {column!r} in the rows (columns: {list(row)})"
                raise EmbedflowError(msg)
            vec = np.asarray(as_numpy(row[column]))
            if array is None:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=vec.dtype, shape=(rows, *vec.shape))
            if count >= rows or vec.shape != array.shape[1:]:
                msg = f"sink npy: row {row_number} has shape {vec.shape}, the array holds {array.shape[1:]}"
                raise EmbedflowError(msg)
            array[count] = vec
            keys.write(json.dumps({"row": row_number, "key": key}) + "\n")
            count += 1
        if array is None:
            np.save(tmp, np.empty((0,), np.float32))
        else:
            array.flush()
            del array
    return count


def write_output(kind: str, path: Path, records: Iterator[Record], rows: int, column: str | None = None) -> int:
    """Write ``records`` (in order) as ``kind``; returns the number of rows written."""
    if kind == "parquet":
        return write_parquet(path, records)
    if kind == "jsonl":
        return write_jsonl(path, records)
    if kind == "npy":
        assert column is not None
        return write_npy(path, records, rows, column)
    msg = f"sink {kind!r} is not one of parquet, jsonl, npy"
    raise EmbedflowError(msg)


def write_lines(path: Path, lines: Iterator[str]) -> None:
    """Write text lines to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)

