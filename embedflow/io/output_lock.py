"""One writer per output: ``.<output>.lock`` beside it (released on any exit; a dead process's
lock is free), and ``.<output>.pid`` saying who holds it.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "v.parquet"
>>> lock = OutputLock(out).acquire()
>>> OutputLock(out).acquire()  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
embedflow.io.output_lock.OutputLocked: .../v.parquet: another run (pid ...) is writing this output; wait for it to finish, or write to another output
>>> lock.release()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import EmbedflowError


class OutputLocked(EmbedflowError):
    """Another run is writing the same output."""


class OutputLock:
    """The lock of one output; ``created`` lists the output's folders this run made."""

    def __init__(self, output: str | os.PathLike[str]):
        self.output = Path(output)
        self.path = self.output.parent / f".{self.output.name}.lock"
        self.created: list[Path] = []
        self._lock: Any = None

    def acquire(self) -> OutputLock:
        """Hold the lock, or fail at once saying who holds it."""
        from filelock import FileLock, Timeout

        self.created = [d for d in (self.output.parent, *self.output.parent.parents) if not d.exists()]
        self.output.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = self.path.with_suffix(".pid")
            who = holder.read_text().strip() if holder.exists() else "another process"
            msg = f"{self.output}: another run (pid {who}) is writing this output; wait for it to finish, or write to another output"
            raise OutputLocked(msg) from None
        self.path.with_suffix(".pid").write_text(str(os.getpid()))
        self._lock = lock
        return self

    def release(self, tidy: bool = False) -> None:
        """Release the lock; with ``tidy``, also remove the lock files and the folders this run
        made, while they are empty (a run that failed before writing anything)."""
        if self._lock is None:
            return
        self.path.with_suffix(".pid").unlink(missing_ok=True)
        self._lock.release()
        self._lock = None
        if tidy and self.created:
            self.path.unlink(missing_ok=True)
            for folder in self.created:  # innermost first; only while empty
                try:
                    folder.rmdir()
                except OSError:
                    break
