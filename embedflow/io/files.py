"""File sinks: Parquet, JSON lines, and ``.npy`` with a key sidecar.

Every file is written under a temporary name in the same folder and renamed when complete,
so a reader never sees half a file; temporaries that a killed process left behind are
removed by the next writer of the same file.

>>> import tempfile, pathlib, numpy as np
>>> from embedflow.io.sinks import SinkContext
>>> out = pathlib.Path(tempfile.mkdtemp()) / "v.jsonl"
>>> sink = JsonlSink(out); sink.open(SinkContext(named=True))
>>> sink.write([0], [{"v": np.ones(2, np.float32)}]); sink.close()
1
>>> out.read_text().strip()
'{"v": [1.0, 1.0]}'
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import EmbedflowError
from .arrow import as_numpy, rows_to_table
from .keys import PartKeys, row_key
from .overwrite import check_replaceable
from .remote import check_writable, is_remote, local_path, upload
from .sinks import Sink, SinkContext, select_columns

ROW_GROUP = 4096


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


class AtomicFile:
    """A temporary path beside ``target``, renamed onto it by ``commit`` or removed by ``discard``.

    Creating one removes the temporaries of ``target`` that dead processes left behind.
    """

    def __init__(self, target: str | os.PathLike[str]):
        self.url = os.fspath(target) if is_remote(target) else None
        if self.url is not None:  # written here, uploaded in one piece by commit
            self.target = Path(tempfile.mkdtemp(prefix="embedflow-upload-")) / self.url.rstrip("/").rsplit("/", 1)[-1]
            self.tmp = self.target
            return
        self.target = Path(local_path(target))
        self.target.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.target.parent.glob(f".{self.target.name}.*.tmp"):
            pid = stale.name[len(self.target.name) + 2 :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                stale.unlink(missing_ok=True)
        self.tmp = self.target.with_name(f".{self.target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")

    def commit(self) -> Any:
        """The file in place: renamed onto the target, or uploaded to the URL (returned)."""
        if self.url is not None:
            try:
                upload(self.tmp, self.url)
            finally:
                self.discard()
            return self.url
        os.replace(self.tmp, self.target)
        return self.target

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
        if self.url is not None:
            shutil.rmtree(self.tmp.parent, ignore_errors=True)


def in_row_order(lines: Iterable[str]) -> list[str]:
    """Failure records (JSON lines) sorted by their source row — the one order every errors
    file is written in (a record without a row counts as row 0).

    >>> in_row_order(['{"row": 2}', '{"row": 1}', '{"step": "x"}'])
    ['{"step": "x"}', '{"row": 1}', '{"row": 2}']
    """
    return sorted(lines, key=lambda s: json.loads(s).get("row") or 0)


def write_lines(path: str | os.PathLike[str], lines: Iterator[str]) -> None:
    """Write text lines to ``path`` atomically."""
    file = AtomicFile(path)
    try:
        with open(file.tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        file.commit()
    finally:
        file.discard()


def plain_value(value: Any) -> Any:
    """A value JSON and Milvus can store: arrays become lists, numpy scalars and paths plain."""
    import numpy as np

    value = as_numpy(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class FileSink(Sink):
    """A file written atomically; ``columns`` keeps only those columns of named rows."""

    suffix = ""

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[str] | None = None):
        self.path: Any = os.fspath(path) if is_remote(path) else Path(local_path(path))  # a URL stays a string
        self.columns = tuple(columns) if columns else None

    def open(self, context: SinkContext) -> None:
        super().open(context)
        if isinstance(self.path, str):
            check_writable(self.path)
        elif self.path.is_dir():
            msg = f"output {str(self.path)!r} is a folder; name a file, e.g. {self.path / ('vectors' + self.suffix)}"
            raise EmbedflowError(msg)
        else:
            check_replaceable(self.path, context.source)
        self.file = AtomicFile(self.path)
        self.count = 0

    def _rows(self, rows: list[Any]) -> list[dict[str, Any]]:
        if not self.context.named:
            return [{"value": r} for r in rows]
        return select_columns(rows, self.columns)

    def abort(self) -> None:
        self._release()
        self.file.discard()

    def _release(self) -> None:  # pragma: no cover - subclasses with open handles override
        pass


class ParquetSink(FileSink):
    """Rows as Parquet, in row groups; vectors as fixed-size lists of their dtype."""

    suffix = ".parquet"

    def __init__(
        self,
        path: str | os.PathLike[str],
        columns: Sequence[str] | None = None,
        row_group_rows: int = ROW_GROUP,
        schema_columns: Sequence[str] | None = None,
    ):
        super().__init__(path, columns)
        self.row_group_rows = row_group_rows
        self.schema_columns = tuple(schema_columns) if schema_columns else self.columns  # an empty file still has its columns

    def open(self, context: SinkContext) -> None:
        super().open(context)
        self.writer: Any = None
        self.batch: list[dict[str, Any]] = []

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        self.batch.extend(self._rows(rows))
        self.count += len(rows)
        while len(self.batch) >= self.row_group_rows:
            self._flush(self.batch[: self.row_group_rows])
            self.batch = self.batch[self.row_group_rows :]

    def _flush(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        table = rows_to_table(rows, named=True)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.file.tmp, table.schema)
        elif table.schema != self.writer.schema:
            table = table.cast(self.writer.schema)
        self.writer.write_table(table)

    def close(self) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.batch:
            self._flush(self.batch)
            self.batch = []
        if self.writer is None:  # no rows: the columns, typed null (their types come from rows)
            self.writer = pq.ParquetWriter(self.file.tmp, pa.schema([(c, pa.null()) for c in self.schema_columns or ()]))
        self.writer.close()
        self.writer = None
        return self.file.commit()

    def _release(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()
            self.writer = None


class JsonlSink(FileSink):
    """One JSON object per row; arrays become lists."""

    suffix = ".jsonl"

    def open(self, context: SinkContext) -> None:
        super().open(context)
        self.handle: IO[str] | None = open(self.file.tmp, "w", encoding="utf-8")

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        assert self.handle is not None
        for row in self._rows(rows):
            self.handle.write(json.dumps({k: plain_value(v) for k, v in row.items()}) + "\n")
        self.count += len(rows)

    def close(self) -> int:
        self._release()
        self.file.commit()
        return self.count

    def _release(self) -> None:
        handle = getattr(self, "handle", None)
        if handle is not None:
            handle.close()
            self.handle = None


class NpySink(FileSink):
    """A 2-D array of ``column`` in ``path`` and ``<path>.keys.jsonl``: one line per array row
    with the source row number and the row key. Streams: the vectors go to a temporary file
    as they come, and the array file is assembled behind its header at the end."""

    suffix = ".npy"

    def __init__(self, path: str | os.PathLike[str], column: str):
        super().__init__(path, (column,))
        self.column = column

    def open(self, context: SinkContext) -> None:
        super().open(context)
        self.keys_file = AtomicFile(f"{self.path}.keys.jsonl" if isinstance(self.path, str) else self.path.with_name(self.path.name + ".keys.jsonl"))
        self.data_path = self.file.tmp.with_name(self.file.tmp.name + ".data")
        self.data: IO[bytes] | None = open(self.data_path, "wb")
        self.keys: IO[str] | None = open(self.keys_file.tmp, "w", encoding="utf-8")
        self.dtype: Any = None
        self.shape: tuple[int, ...] | None = None
        self.parts = PartKeys()  # rows that came of one row (chunk) are keyed by their index

    def write(self, numbers: Sequence[int], rows: list[Any]) -> None:
        import numpy as np

        assert self.data is not None and self.keys is not None
        key_column = self.context.key_column
        for number, row in zip(numbers, rows):
            if not isinstance(row, dict) or self.column not in row:
                have = list(row) if isinstance(row, dict) else type(row).__name__
                msg = f"sink npy: no column {self.column!r} in the rows (columns: {have})"
                raise EmbedflowError(msg)
            vec = np.asarray(as_numpy(row[self.column]))
            if self.shape is None:
                self.dtype, self.shape = vec.dtype, vec.shape
            if vec.shape != self.shape:
                msg = f"sink npy: row {number} has shape {vec.shape}, the array holds {self.shape}"
                raise EmbedflowError(msg)
            self.data.write(np.ascontiguousarray(vec, dtype=self.dtype).tobytes())
            key = row_key(number, row, key_column)
            if self.context.expands and key is not None:
                key = self.parts.key(int(number), key)
            self.keys.write(json.dumps({"row": int(number), "key": key}) + "\n")
            self.count += 1

    def close(self) -> Path:
        import numpy as np

        self._release()
        shape = (self.count, *(self.shape or ()))
        dtype = self.dtype if self.dtype is not None else np.dtype(np.float32)
        with open(self.file.tmp, "wb") as out:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(out, header)
            with open(self.data_path, "rb") as data:
                shutil.copyfileobj(data, out, 1 << 20)
        self.data_path.unlink(missing_ok=True)
        self.keys_file.commit()
        return self.file.commit()

    def abort(self) -> None:
        super().abort()
        self.keys_file.discard()
        self.data_path.unlink(missing_ok=True)

    def _release(self) -> None:
        for name in ("data", "keys"):
            handle = getattr(self, name, None)
            if handle is not None:
                handle.close()
                setattr(self, name, None)


FILE_SINKS: dict[str, type[FileSink]] = {"parquet": ParquetSink, "jsonl": JsonlSink, "npy": NpySink}
