"""Exceptions raised by embedflow.

Every message leads with the offending value, lists what is valid and says the fix (docs/DESIGN.md §5).
Errors about names are also ``AttributeError`` / ``TypeError`` so ``hasattr`` and ordinary
Python handling keep working.

>>> from embedflow.errors import EmbedflowError, UnknownOperatorError
>>> issubclass(UnknownOperatorError, (EmbedflowError, AttributeError))
True
"""

from __future__ import annotations

import difflib
import os
import sys
import types
import warnings
from collections.abc import Iterable
from typing import Any


class EmbedflowError(Exception):
    """Base class of every error embedflow raises on purpose."""


class UnknownOperatorError(EmbedflowError, AttributeError):
    """An operator or namespace name that nothing registered."""


class OperatorLoadError(EmbedflowError, ImportError):
    """An operator's entry point is declared but could not be imported."""


class ParameterError(EmbedflowError, TypeError):
    """An operator or step was called with parameters its signature does not accept."""


class ColumnError(EmbedflowError, KeyError):
    """A selector names a column the rows do not have, or named mode is used wrongly."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ItemError(EmbedflowError):
    """One input item failed inside a step; the original exception is the ``__cause__``.

    Attributes say where: ``step`` (the operator or step name), ``row`` (the source row
    number, counted from 0) and ``item`` (a short repr of the input).
    """

    def __init__(self, step: str, row: int | None, item: object, cause: BaseException):
        self.step = step
        self.row = row
        self.item = short_repr(item)
        self.cause = cause
        where = f"row {row}" if row is not None else "a batch"
        msg = (
            f"{step} failed on {where} (input {self.item}): {type(cause).__name__}: {cause}. "
            "Fix the input, or call .safe() before this step to skip and record failing items."
        )
        super().__init__(msg)

    def __reduce__(self) -> tuple[Any, ...]:  # keep picklable across processes
        return (type(self), (self.step, self.row, self.item, self.cause))


class PlanError(EmbedflowError, ValueError):
    """The chain cannot run as built (an option value, a sink on the wrong mode, ...)."""


class PipelineError(EmbedflowError, ValueError):
    """A mistake in a pipeline file; the message starts with ``file:line``."""


class ModelNotFoundError(EmbedflowError, OSError):
    """A model name that no local folder, installed model package, cache or reachable hub serves."""


class UsageError(EmbedflowError):
    """A command-line mistake (exit code 2)."""


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look like ``name`` (for "did you mean").

    >>> close_matches("normalise", ["normalize", "image_decode"])
    ['normalize']
    """
    return difflib.get_close_matches(name, sorted(set(candidates)), n=n, cutoff=0.6)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A sentence suggesting close matches, or an empty string.

    >>> did_you_mean("nromalize", ["normalize"])
    " Did you mean 'normalize'?"
    """
    matches = close_matches(name, candidates)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


def short_repr(value: object, limit: int = 80) -> str:
    """A one-line repr of an input, cut to ``limit`` characters; arrays show shape and dtype.

    >>> short_repr("x" * 200)[:10]
    "'xxxxxxxxx"
    """
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"<{type(value).__name__} shape={tuple(shape)} dtype={dtype}>"
    if isinstance(value, (bytes, bytearray)) and len(value) > limit:
        return f"<{len(value)} bytes>"
    text = " ".join(repr(value).split())  # one line, whatever the object's repr
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that points at the first caller outside
    embedflow (the line of user code that ran the chain), however deep the call came from."""
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


_THREAD_STARTS = (os.path.join("concurrent", "futures"), "threading.py")
_user_site: tuple[str, int, dict[str, Any]] | None = None  # the line that started the latest run


def remember_user_site() -> None:
    """Note the user's line that is starting a run (the engine calls this in the caller's
    thread), so that a warning raised later in one of its worker threads points there."""
    global _user_site
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back
    if frame is not None:
        _user_site = (frame.f_code.co_filename, frame.f_lineno, frame.f_globals)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the user's line: the caller's own when the stack has one,
    else (a worker thread's stack starts in the thread pool) the line that started the run.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_user("careful")
    >>> str(caught[0].message), caught[0].filename.endswith(".py") or caught[0].filename.startswith("<doctest")
    ('careful', True)
    """
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    in_thread_pool = frame is None or any(part in frame.f_code.co_filename for part in _THREAD_STARTS)
    if not in_thread_pool or _user_site is None:
        warnings.warn(message, category, stacklevel=level + 1)
        return
    filename, lineno, module_globals = _user_site
    registry = module_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(
        message, category, filename, lineno, module=module_globals.get("__name__"), registry=registry, module_globals=module_globals
    )


class DeviceError(EmbedflowError):
    """A model step failed for a whole batch because of the device or the model's placement
    (a device-side assert, tensors on different devices): fatal, never skipped as bad rows."""
