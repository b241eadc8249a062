"""Files by URL through fsspec: ``s3://``, ``gs://``, ``http(s)://`` (read only), ``file://`` and
whatever filesystems fsspec has installed. A plain path stays a local path; every function here
treats both, so sources and sinks call them without asking which they have.

Writing is atomic where the store allows: an output is written to a local temporary file and
uploaded in one piece at the end (an object store shows an object only once its upload is
complete); HTTP cannot be written, and says so.

>>> is_remote("s3://bucket/x.parquet"), is_remote("out/x.parquet"), local_path("file:///tmp/x")
(True, False, '/tmp/x')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO, Any

from ..errors import EmbedflowError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
INSTALL_HINT = "pip install 'embedflow[remote]'"
_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp", "az": "adlfs", "abfs": "adlfs"}


def scheme(path: Any) -> str:
    """``s3`` for ``s3://b/k``; ``""`` for a local path."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    found = _SCHEME.match(text)
    return found.group(1).lower() if found else ""


def is_remote(path: Any) -> bool:
    """A URL that is not ``file://``."""
    return scheme(path) not in ("", "file")


def local_path(path: Any) -> str:
    """A local path for ``path`` (``file://`` removed)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    return text[len("file://") :] if scheme(text) == "file" else text


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it; a one-line install hint when
    the filesystem's package is missing."""
    try:
        import fsspec
    except ImportError as exc:
        msg = f"{url!r}: reading and writing URLs needs fsspec, which is not installed: {INSTALL_HINT}"
        raise EmbedflowError(msg) from exc
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        package = _BACKENDS.get(scheme(url), "the fsspec backend for it")
        msg = f"{url!r}: {scheme(url)}:// needs {package}, which is not installed: {INSTALL_HINT} (or pip install {package})"
        raise EmbedflowError(msg) from exc
    except ValueError as exc:
        msg = f"{url!r}: fsspec knows no filesystem {scheme(url)!r}; known: file, s3, gs, http(s), and those of installed packages"
        raise EmbedflowError(msg) from exc


def open_input(path: Any) -> IO[bytes]:
    """``path`` opened for reading bytes, local or remote (seekable where the store allows)."""
    if not is_remote(path):
        return open(local_path(path), "rb")
    fs, inner = filesystem(str(path))
    try:
        return _Named(fs.open(inner, "rb"), str(path))  # type: ignore[return-value]
    except FileNotFoundError:
        raise
    except OSError as exc:
        msg = f"{path!r} could not be opened: {exc}"
        raise EmbedflowError(msg) from exc


class _Named:
    """A remote file whose read errors name it: a server that dies mid-read raises its
    client's error (``ClientPayloadError: Response payload is not completed``) without the URL."""

    def __init__(self, file: Any, url: str):
        self._file, self._url = file, url

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._file, name)
        if name not in ("read", "readline", "readinto", "read1", "readlines"):
            return attr

        def reading(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except EmbedflowError:
                raise
            except Exception as exc:
                try:
                    where = f" after {self._file.tell()} bytes"
                except Exception:  # noqa: BLE001 - a broken file may not tell either
                    where = ""
                msg = f"{self._url!r}: reading failed{where}: {type(exc).__name__}: {exc}"
                raise EmbedflowError(msg) from exc

        return reading

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def __enter__(self) -> _Named:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def info(path: Any) -> dict[str, Any]:
    """``{"size", "version"}`` of a file (version: ETag or modification time); raises
    ``FileNotFoundError`` when there is none, ``IsADirectoryError`` for a folder."""
    if not is_remote(path):
        st = os.stat(local_path(path))
        if not os.path.isfile(local_path(path)):
            raise IsADirectoryError(str(path))
        return {"size": st.st_size, "version": st.st_mtime_ns}
    fs, inner = filesystem(str(path))
    found = fs.info(inner)
    if found.get("type") == "directory":
        raise IsADirectoryError(str(path))
    version = found.get("ETag") or found.get("etag") or found.get("LastModified") or found.get("mtime") or found.get("last_modified")
    return {"size": found.get("size"), "version": str(version) if version is not None else None}


def glob(pattern: str) -> list[tuple[str, dict[str, Any]]]:
    """Files matching a URL pattern (``s3://bucket/imgs/**/*.jpg``), sorted, as full URLs with
    their info. Over HTTP this reads the server's folder listing page."""
    fs, inner = filesystem(pattern)
    found = fs.glob(inner, detail=True)
    protocol = scheme(pattern)
    files = []
    for name, entry in sorted(found.items()):
        if entry.get("type", "file") != "file":
            continue
        url = name if "://" in name else f"{protocol}://{name.lstrip('/')}"
        files.append((url, entry))
    return files


def upload(local: str | os.PathLike[str], url: str) -> None:
    """Copy a finished local file to ``url`` in one piece; a clear error for a read-only store."""
    if scheme(url) in ("http", "https"):
        msg = f"{url!r}: http(s) URLs can be read, not written; write to s3://, gs://, a local path, ..."
        raise EmbedflowError(msg)
    fs, inner = filesystem(url)
    parent = inner.rsplit("/", 1)[0]
    if parent and parent != inner:
        fs.makedirs(parent, exist_ok=True)
    fs.put_file(os.fspath(local), inner)


def check_writable(url: str) -> None:
    """Fail before any work when ``url`` cannot be written (HTTP, a missing backend)."""
    if scheme(url) in ("http", "https"):
        msg = f"output {url!r}: http(s) URLs can be read, not written; write to s3://, gs://, a local path, ..."
        raise EmbedflowError(msg)
    filesystem(url)


def remove(path: Any) -> None:
    """Delete a file if it is there, local or remote."""
    if not is_remote(path):
        Path(local_path(path)).unlink(missing_ok=True)
        return
    fs, inner = filesystem(str(path))
    if fs.exists(inner):
        fs.rm_file(inner)
