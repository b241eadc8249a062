"""Column selectors: ``op["in", "out"]``, ``op[("a", "b"), "c"]``, ``select["a", "b"]``.

>>> io_selectors(("path", "img"), "image_decode")
(('path',), ('img',))
>>> column_list(("a", "b"), "select")
('a', 'b')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..errors import ColumnError

Selectors = tuple[tuple[str, ...] | None, tuple[str, ...] | None]


def _names(part: Any, where: str) -> tuple[str, ...]:
    names = (part,) if isinstance(part, str) else tuple(part) if isinstance(part, (tuple, list)) else None
    if not names or not all(isinstance(n, str) and n for n in names):
        msg = f"{where}: selector {part!r} must be a column name or a tuple of column names"
        raise ColumnError(msg)
    return names


def io_selectors(key: Any, where: str) -> Selectors:
    """``["in", "out"]``, ``["col"]`` or ``[("a", "b"), "c"]`` -> (inputs, outputs).

    >>> io_selectors(("path", "img"), "image_decode")
    (('path',), ('img',))
    """
    parts = key if isinstance(key, tuple) else (key,)
    if len(parts) == 1:
        return _names(parts[0], where), None
    if len(parts) == 2:
        return _names(parts[0], where), _names(parts[1], where)
    msg = (
        f"{where}[{', '.join(map(repr, parts))}]: give at most an input and an output selector; "
        "group several columns in tuples, e.g. op[('a', 'b'), 'c']"
    )
    raise ColumnError(msg)


def column_list(key: Any, where: str) -> tuple[str, ...]:
    """``["a", "b"]`` -> ("a", "b") for steps that only take column names (select, sources)."""
    parts = key if isinstance(key, tuple) else (key,)
    out: list[str] = []
    for part in parts:
        out.extend(_names(part, where))
    return tuple(out)


class Selectable:
    """Makes a method usable as ``dc.m(...)`` and ``dc.m["a", "b"](...)``."""

    def __init__(self, method: Callable[..., Any]):
        self.method = method
        functools.update_wrapper(self, method)  # type: ignore[arg-type]  # an object, not a function, takes the name and docs

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return BoundSelectable(obj, self.method)


class BoundSelectable:
    __slots__ = ("_owner", "_method", "_key", "__doc__")

    def __init__(self, owner: Any, method: Callable[..., Any], key: Any = None):
        self._owner, self._method, self._key = owner, method, key
        self.__doc__ = method.__doc__

    def __getitem__(self, key: Any) -> BoundSelectable:
        return BoundSelectable(self._owner, self._method, key)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method(self._owner, *args, _key=self._key, **kwargs)

    def __repr__(self) -> str:
        sel = f"[{self._key!r}]" if self._key is not None else ""
        return f"<step {self._method.__name__}{sel} of {type(self._owner).__name__}>"
