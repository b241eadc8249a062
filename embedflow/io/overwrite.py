"""What an output may replace: a regular file (or nothing) that the run does not read.

Refused before any work, with one line: an output that is one of the run's inputs (after
resolving links and relative paths; a glob that lists it, or would list it once written), and an
existing output that is not a regular file (a device such as ``/dev/null``, a FIFO, a socket),
which writing atomically would replace with a file.

>>> import tempfile, os
>>> folder = tempfile.mkdtemp()
>>> from embedflow.io.sources import GlobSource
>>> source = GlobSource(kind="glob", label="glob", patterns=(os.path.join(folder, "*.txt"),))
>>> check_replaceable(os.path.join(folder, "out.parquet"), source)
>>> check_replaceable(os.path.join(folder, "out.txt"), source)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
embedflow.errors.EmbedflowError: output '.../out.txt' would be read as an input: the glob '.../*.txt' matches it. Fix: write the output elsewhere, or narrow the glob
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from ..errors import EmbedflowError
from .remote import is_remote, local_path
from .sources import FileSource, GlobSource


def check_replaceable(path: str | os.PathLike[str], source: Any = None, database: bool = False) -> None:
    """Fail, naming ``path`` and the fix, when writing it would destroy something: an input of
    ``source`` or an existing path that is not a regular file (``database``: a folder is fine,
    as Milvus Lite may keep one)."""
    if is_remote(path):
        return
    target = os.fspath(path)
    try:
        mode = os.stat(target).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not (stat.S_ISDIR(mode) and database):
        kind = _kind(mode)
        msg = f"output {target!r} exists and is {kind}, not a regular file; writing it would replace it. Fix: choose a file path for the output"
        raise EmbedflowError(msg)
    why = _read_by(target, source)
    if why is not None:
        msg = f"output {target!r} would be read as an input: {why}. Fix: write the output elsewhere" + (
            ", or narrow the glob" if "glob" in why else ""
        )
        raise EmbedflowError(msg)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _read_by(target: str, source: Any) -> str | None:
    """Why the run's ``source`` reads ``target`` (None: it does not)."""
    real = os.path.realpath(target)
    if isinstance(source, FileSource) and not is_remote(source.path):
        if os.path.realpath(local_path(source.path)) == real:
            return f"it is the input file {source.path!r}"
    if isinstance(source, GlobSource):
        for pattern in source.patterns:
            if is_remote(pattern):
                continue
            expanded = os.path.expanduser(local_path(pattern))
            if _glob_matches(os.path.abspath(expanded), os.path.abspath(target)) or _glob_matches(os.path.realpath(expanded), real):
                return f"the glob {pattern!r} matches it"
    return None


def _glob_matches(pattern: str, path: str) -> bool:
    """Whether ``glob.glob(pattern, recursive=True)`` would list ``path`` if it existed
    (``*`` and ``?`` stay inside one folder, ``**`` crosses folders, ``[...]`` a set)."""
    regex, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            regex.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            regex.append(".*")
            i += 2
            continue
        if c == "*":
            regex.append("[^/]*")
        elif c == "?":
            regex.append("[^/]")
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            regex.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
            continue
        else:
            regex.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(regex), path) is not None
