"""What a row holds, as a digest: the key under which an incremental run finds a row's results.

A row's digest covers every value of the row (in column order, types kept apart: ``1`` and
``"1"`` differ) and, for the columns that name a file an operator opens, the file's bytes —
not only its name, so a photo replaced under the same name is a new row. Two rows with the
same values share one digest (duplicate texts share one result).

>>> row_digest({"text": "a cat"}) == row_digest({"text": "a cat"})
True
>>> row_digest({"n": 1}) == row_digest({"n": "1"})
False
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from typing import Any

from .remote import info as remote_info
from .remote import is_remote

CHUNK = 1 << 20


class FileDigests:
    """The digests of files' bytes, remembered with each file's size, modification time and
    inode (as git's index does): a file whose stat is unchanged is not read again. ``known``
    is what an earlier run remembered (:meth:`ResultStore.file_digests`); ``seen`` what this
    one did.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.bin")
    >>> open(path, "wb").write(b"abc")
    3
    >>> memo = FileDigests()
    >>> memo.digest(path) == FileDigests(memo.seen).digest(path)
    True
    """

    def __init__(self, known: dict[str, list[Any]] | None = None):
        self.known = known or {}
        self.seen: dict[str, list[Any]] = {}
        self.read = 0  # files whose bytes were read

    def digest(self, path: str) -> str:
        """The digest of ``path``'s bytes ("unreadable" for a file that cannot be read)."""
        try:
            st = os.stat(path)
        except OSError:
            return "unreadable"
        stat = [st.st_size, st.st_mtime_ns, st.st_ino]
        found = self.known.get(path)
        if found is not None and found[:3] == stat:
            self.seen[path] = found
            return str(found[3])
        h = hashlib.blake2b(digest_size=20)
        try:
            with open(path, "rb") as f:
                while block := f.read(CHUNK):
                    h.update(block)
        except OSError:
            return "unreadable"
        self.read += 1
        self.seen[path] = [*stat, h.hexdigest()]
        return h.hexdigest()


def row_digest(row: Any, file_columns: Iterable[str] = (), whole_is_file: bool = False, files: FileDigests | None = None) -> str:
    """The hex digest of ``row`` (a dict of columns, or a plain value); ``file_columns`` (or the
    row itself, with ``whole_is_file``) are paths whose files' bytes are part of it (through
    ``files``, which remembers them)."""
    h = hashlib.blake2b(digest_size=20)
    columns = set(file_columns)
    memo = files if files is not None else FileDigests()
    if isinstance(row, dict):
        for column, value in row.items():
            _feed(h, column)
            _feed_file(h, value, memo) if column in columns and isinstance(value, (str, os.PathLike)) else _feed(h, value)
    elif whole_is_file and isinstance(row, (str, os.PathLike)):
        _feed_file(h, row, memo)
    else:
        _feed(h, row)
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    """A typed, length-prefixed encoding: no two different values encode the same."""
    if value is None or isinstance(value, bool):
        h.update(b"N" if value is None else (b"T" if value else b"F"))
    elif isinstance(value, int):
        _tagged(h, b"i", str(value).encode())
    elif isinstance(value, float):
        _tagged(h, b"f", struct.pack("<d", value))
    elif isinstance(value, str):
        _tagged(h, b"s", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _tagged(h, b"b", bytes(value))
    elif isinstance(value, (list, tuple)):
        _tagged(h, b"l", str(len(value)).encode())
        for item in value:
            _feed(h, item)
    elif isinstance(value, dict):
        _tagged(h, b"d", str(len(value)).encode())
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
    elif type(value).__module__ == "numpy" and hasattr(value, "tobytes"):
        _tagged(h, b"a", f"{value.dtype.str}{getattr(value, 'shape', ())}".encode())
        h.update(value.tobytes())
    else:  # anything else by its repr: stable for the values rows hold (dates, decimals)
        _tagged(h, b"r", f"{type(value).__qualname__}:{value!r}".encode())


def _tagged(h: Any, tag: bytes, data: bytes) -> None:
    h.update(tag + struct.pack("<Q", len(data)))
    h.update(data)


def _feed_file(h: Any, path: str | os.PathLike[str], files: FileDigests) -> None:
    """A file's name and bytes; a remote file's name and what its store says of its content
    (size, and ETag or modification time); a file that cannot be read by its name only (its
    step then fails on it, as it would without a store)."""
    name = os.fspath(path)
    _feed(h, name)
    if is_remote(name):
        try:
            meta = remote_info(name)
        except OSError:
            h.update(b"unreadable")
            return
        _feed(h, [str(meta.get("size")), str(meta.get("version"))])
        return
    _feed(h, files.digest(name))
