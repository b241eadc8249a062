"""How rows travel through Ray: each row pickled in a ``__payload`` column beside its source
row number ``__row``, so any Python value (arrays, images) survives the trip unchanged and the
order, the resume keys and the failure records stay those of the local engine.

A row skipped under ``.safe()`` travels as a *failure marker* carrying its record; an error
raised in a task travels as a *raised marker* carrying the exception, because raised inside a
Ray task it would reach the driver as Ray's "UDF failed to process a data block", without the
row and the cause.

>>> batch = encode([7], ["x"], [], [])
>>> decode(batch)[:2]
([7], ['x'])
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import EmbedflowError
from ..failures import Failure, FailureLog

FAILED = "__embedflow_failure__"  # a row skipped under .safe(): (marker, failure record)
RAISED = "__embedflow_raised__"  # a step raised: (marker, exception, its cause)
ROWS_PER_BLOCK = 64


def marker(value: Any) -> str | None:
    """``FAILED`` or ``RAISED`` when a payload is a marker instead of a row."""
    if isinstance(value, tuple) and value and isinstance(value[0], str) and value[0] in (FAILED, RAISED):
        return value[0]
    return None


def decode(batch: dict[str, Any]) -> tuple[list[int], list[Any], list[bytes]]:
    """Row numbers, rows and the markers (passed on as they are) of a Ray batch."""
    numbers, rows, markers = [], [], []
    for number, payload in zip(batch["__row"], batch["__payload"]):
        value = pickle.loads(payload)
        if marker(value):
            markers.append(payload)
            continue
        numbers.append(int(number))
        rows.append(value)
    return numbers, rows, markers


def encode(numbers: Sequence[int], rows: list[Any], markers: list[bytes], failed: list[dict[str, Any]]) -> dict[str, Any]:
    """A Ray batch of rows, the markers passed on, and new failure markers."""
    import numpy as np

    payloads = [pickle.dumps(r, protocol=5) for r in rows] + markers
    payloads += [pickle.dumps((FAILED, rec), protocol=5) for rec in failed]
    out = np.empty(len(payloads), dtype=object)
    out[:] = payloads
    return {"__row": np.asarray(list(numbers) + [-1] * (len(markers) + len(failed)), dtype=np.int64), "__payload": out}


def raised(exc: BaseException) -> bytes:
    """A raised marker for ``exc`` (its text only, when the exception does not pickle)."""
    try:
        return pickle.dumps((RAISED, exc, exc.__cause__), protocol=5)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: keep its text
        return pickle.dumps((RAISED, EmbedflowError(f"{type(exc).__name__}: {exc}"), None), protocol=5)


def carry_errors(call: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Send a task's exception to the driver as a raised marker."""

    @functools.wraps(call)
    def run(*args: Any) -> dict[str, Any]:
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001 - re-raised on the driver
            return encode([], [], [raised(exc)], [])

    return run


class Collector(FailureLog):
    """A FailureLog that keeps its records to send them to the driver with the rows."""

    def __init__(self, key_column: str | None) -> None:
        super().__init__(None, key_column)
        self.records: list[dict[str, Any]] = []

    def _record(self, failure: Failure) -> None:  # no logging here: the driver logs
        self.records.append(failure.__dict__.copy())

    def close(self) -> None:
        pass


def failure_of(record: dict[str, Any]) -> Failure:
    """The driver's copy of a failure recorded on a worker."""
    return Failure(**record)
