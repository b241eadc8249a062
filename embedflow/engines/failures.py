"""Recording items that failed under ``.safe()``: nothing is dropped silently.

Each failure is logged (logger ``embedflow``), handed to the target given to
``.safe(errors=...)`` — a list, a callable, or a path that receives JSON lines — and a run
that skipped anything ends with one warning that counts them.

>>> import embedflow as ef
>>> failed = []
>>> ef.dc([1, 0, 2]).safe(errors=failed).map(lambda x: 1 // x).to_list()
[1, 0]
>>> failed[0]["row"], failed[0]["error_type"]
(1, 'ZeroDivisionError')
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import EmbedflowError, short_repr, user_stacklevel
from ..io.keys import row_key
from ..plan import ErrorTarget, check_error_target

logger = logging.getLogger("embedflow")


@dataclass(frozen=True)
class Failure:
    """One skipped item: where (row, its key, step), what (error type and message), the input."""

    row: int | None
    step: str
    error_type: str
    message: str
    item: str
    key: str | None = None

    @classmethod
    def of(cls, step: str, row: int | None, item: Any, exc: BaseException, key: str | None = None) -> Failure:
        return cls(row, step, type(exc).__name__, str(exc), short_repr(item), key)


class FailureLog:
    """Collects the failures of one run and sends each to ``target``.

    Safe to call from several threads. Records arrive in the order failures happen, which for
    a step running on a thread pool need not be row order: each record carries its row, and
    its key (the ``key_column``'s value, else the row number).
    """

    def __init__(self, target: ErrorTarget = None, key_column: str | None = None):
        self.target = check_error_target(target)
        self.key_column = key_column
        self.count = 0
        self.rows: set[int] = set()  # the source rows that failed (a row may fail in several parts)
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def key_of(self, row_number: int | None, row: Any) -> str | None:
        """The key of a failed row; a row without its key column falls back to the number."""
        try:
            return row_key(row_number, row, self.key_column)
        except EmbedflowError:
            return row_key(row_number, row, None)

    def record(self, failure: Failure) -> None:
        with self._lock:
            self._record(failure)

    def _record(self, failure: Failure) -> None:
        self.count += 1
        if failure.row is not None:
            self.rows.add(failure.row)
        logger.warning(
            "skipped row %s in %s: %s: %s (input %s)",
            failure.row,
            failure.step,
            failure.error_type,
            failure.message,
            failure.item,
        )
        record = asdict(failure)
        if isinstance(self.target, list):
            self.target.append(record)
        elif isinstance(self.target, (str, os.PathLike)):
            if self._file is None:
                path = Path(self.target)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a", encoding="utf-8")
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        elif callable(self.target):
            self.target(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.count:
            where = f"; details in {self.target}" if isinstance(self.target, (str, os.PathLike)) else ""
            warnings.warn(
                f"{self.count} item(s) failed and were skipped under .safe(){where}",
                stacklevel=user_stacklevel(),
            )
