"""Row keys: what identifies a row in an output, an errors file or a vector store.

The key is the ``key`` column's value when there is one (the path of a ``glob`` source, a
``key:`` column named in a pipeline file, ``to_milvus(key=...)``), else the source row number.
One rule, used by every sink and by the failure records.

>>> row_key(3, {"path": "a.jpg"}, "path"), row_key(3, "anything", None)
('a.jpg', '3')
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ColumnError


class PartKeys:
    """Keys for the rows one source row became (``chunk``, ``flat_map``), handed over in input
    order: the parent's key, ``#`` and the part's index.

    >>> parts = PartKeys()
    >>> [parts.key(n, str(n)) for n in (0, 0, 0, 1, 2, 2)]
    ['0#0', '0#1', '0#2', '1#0', '2#0', '2#1']
    """

    def __init__(self) -> None:
        self.last: int | None = None
        self.index = 0

    def key(self, number: int, parent: str) -> str:
        if number == self.last:
            self.index += 1
        else:
            self.last, self.index = number, 0
        return f"{parent}#{self.index}"


def row_key(number: int | None, row: Any, column: str | None) -> str | None:
    """The key of the row ``number`` (None when there is neither a column nor a number)."""
    if column is None:
        return None if number is None else str(number)
    try:
        value = row[column]
    except (KeyError, TypeError, IndexError):
        have = list(row) if isinstance(row, dict) else type(row).__name__
        msg = f"row {number} has no key column {column!r} (columns: {have}); keep that column up to the sink, or name another key"
        raise ColumnError(msg) from None
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
