"""The calls that start a chain: ``dc``, ``glob``, ``read_text``, ``read_jsonl``,
``read_csv``, ``read_parquet``. Each takes optional column names in brackets
(``ef.glob["path"]("*.jpg")``) and returns a lazy DataCollection.

>>> import embedflow as ef
>>> ef.dc["n"]([1, 2]).to_list()
[{'n': 1}, {'n': 2}]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from ..io import sources
from ..io.sources import Source
from .collection import DataCollection
from .selectors import column_list


class _SourceFactory:
    """``ef.glob("*.jpg")`` and ``ef.glob["path"]("*.jpg")``: a source with optional column names."""

    def __init__(self, make: Callable[..., Source], doc: str, name: str, always_named: bool = False):
        self._make, self.__doc__, self.__name__ = make, doc, name
        self._always_named = always_named
        self._columns: tuple[str, ...] | None = None

    def __getitem__(self, key: Any) -> _SourceFactory:
        bound = _SourceFactory(self._make, self.__doc__ or "", self.__name__, self._always_named)
        bound._columns = column_list(key, self.__name__)
        return bound

    def __call__(self, *args: Any, **kwargs: Any) -> DataCollection:
        source = self._make(*args, columns=self._columns, **kwargs)
        return DataCollection.from_source(source)

    def __repr__(self) -> str:
        cols = f"[{', '.join(map(repr, self._columns))}]" if self._columns else ""
        return f"<embedflow source {self.__name__}{cols}>"


def _dc(iterable: Iterable[Any], columns: tuple[str, ...] | None = None) -> Source:
    if isinstance(iterable, (str, bytes)) is False and not hasattr(iterable, "__iter__"):
        msg = f"dc() needs an iterable, got {type(iterable).__name__}"
        raise TypeError(msg)
    return sources.from_iterable(iterable, columns)


def _glob(*patterns: str, columns: tuple[str, ...] | None = None) -> Source:
    return sources.from_glob(patterns, columns)


def _file_source(kind: str) -> Callable[..., Source]:
    def make(path: str | os.PathLike[str], columns: tuple[str, ...] | None = None) -> Source:
        return sources.from_file(kind, path, columns)

    return make


dc = _SourceFactory(
    _dc,
    """A collection over any iterable: one row per item.

``ef.dc["text"](items)`` names the column (rows become dicts); several names unpack tuples.

>>> import embedflow as ef
>>> ef.dc(["a", "b"]).to_list()
['a', 'b']
>>> ef.dc["x", "y"]([(1, 2)]).to_list()
[{'x': 1, 'y': 2}]
""",
    "dc",
)

glob = _SourceFactory(
    _glob,
    """File paths matching the patterns, sorted; ``**`` is recursive.

>>> import embedflow as ef, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()); (d / "a.txt").write_text("x")
1
>>> [pathlib.Path(p).name for p in ef.glob(str(d / "*.txt"))]
['a.txt']
""",
    "glob",
)

read_text = _SourceFactory(
    _file_source("read_text"),
    """One row per line of a UTF-8 text file.

``ef.read_text["text"](path)`` names the column.

>>> import embedflow as ef, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"; _ = p.write_text("a\\nb\\n")
>>> ef.read_text(p).to_list()
['a', 'b']
""",
    "read_text",
)

read_jsonl = _SourceFactory(
    _file_source("read_jsonl"),
    """Rows of a JSON-lines file (always named).

>>> import embedflow as ef, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.jsonl"; _ = p.write_text('{"a": 1}\\n')
>>> ef.read_jsonl(p).to_list()
[{'a': 1}]
""",
    "read_jsonl",
    always_named=True,
)

read_csv = _SourceFactory(
    _file_source("read_csv"),
    """Rows of a CSV file with a header (always named).

>>> import embedflow as ef, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"; _ = p.write_text("a,b\\n1,2\\n")
>>> ef.read_csv(p).to_list()
[{'a': '1', 'b': '2'}]
""",
    "read_csv",
    always_named=True,
)

read_parquet = _SourceFactory(
    _file_source("read_parquet"),
    """Rows of a Parquet file (always named).

>>> import embedflow as ef, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "t.parquet")
>>> _ = ef.dc["n"]([1, 2]).to_parquet(p)
>>> ef.read_parquet(p).to_list()
[{'n': 1}, {'n': 2}]
""",
    "read_parquet",
    always_named=True,
)
