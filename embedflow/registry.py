"""The operator registry: names -> operators, filled by entry points and ``@register``.

Entry points in the group ``embedflow.operators`` are read once, lazily, and stored as their
dotted strings; an operator's module is imported the first time that operator is used, so a
broken plugin only breaks itself and ``import embedflow`` stays fast. The built-in operators
arrive this way too: the core never imports them by name.

>>> import embedflow as ef
>>> @ef.register("doc.double")
... def double(x):
...     return 2 * x
>>> ef.get_operator("doc.double") is double
True
>>> "doc.double" in ef.list_operators("doc.*")
True
"""

from __future__ import annotations

import fnmatch
import importlib
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

from .errors import OperatorLoadError, UnknownOperatorError, did_you_mean
from .operator import callable_name

ENTRY_POINT_GROUP = "embedflow.operators"

T = TypeVar("T")


@dataclass
class _Entry:
    """One registered name. ``target`` is the entry point's ``module:attr`` until loaded."""

    name: str
    source: str  # where it came from, for messages: "package embedflow 0.1.0" / "module:function"
    target: str | None = None
    obj: Any = None


_entries: dict[str, _Entry] = {}  # every known operator name -> its entry
_entry_points_read = False  # entry points are read once, on first use of the registry
_lock = threading.RLock()  # loads may happen from worker threads


def _natural_key(name: str) -> list[Any]:
    """Sort key that orders ``resnet18`` before ``resnet101``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_name(name: str) -> str:
    """Validate an operator name: dotted Python identifiers, none starting with ``_``.

    >>> check_name("image_embedding.timm")
    'image_embedding.timm'
    """
    parts = name.split(".") if isinstance(name, str) else []
    if not parts or not all(p.isidentifier() and not p.startswith("_") for p in parts):
        msg = f"{name!r} is not a valid operator name: use dotted Python identifiers that do not start with '_', such as 'my_ns.my_op'"
        raise ValueError(msg)
    return name


def _add(entry: _Entry) -> None:
    old = _entries.get(entry.name)
    if old is not None and old.source != entry.source:
        warnings.warn(
            f"operator {entry.name!r} is defined twice: by {old.source} and by {entry.source}; "
            f"the one from {entry.source} is used. Rename one of them to keep both.",
            stacklevel=4,
        )
    _entries[entry.name] = entry


def _read_entry_points() -> None:
    global _entry_points_read
    with _lock:
        if _entry_points_read:
            return
        _entry_points_read = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            where = f"package {dist.name} {dist.version}" if dist is not None else "an entry point"
            try:
                check_name(ep.name)
            except ValueError as exc:
                warnings.warn(f"ignoring entry point {ep.name!r} = {ep.value!r} from {where}: {exc}", stacklevel=3)
                continue
            entry = _Entry(ep.name, f"{where} ({ep.value})", target=ep.value)
            current = _entries.get(ep.name)
            if current is not None and current.target is None:  # registered in code: it wins
                warnings.warn(
                    f"operator {ep.name!r} is defined twice: by {entry.source} and by {current.source}; the one from {current.source} is used.",
                    stacklevel=3,
                )
                continue
            _add(entry)


def reload_entry_points() -> None:
    """Forget what was read from entry points and read them again (after installing a plugin)."""
    global _entry_points_read
    with _lock:
        for name in [n for n, e in _entries.items() if e.target is not None]:
            del _entries[name]
        _entry_points_read = False
    _read_entry_points()


def register(name: str) -> Callable[[T], T]:
    """Register a function or an :class:`~embedflow.Operator` class under ``name``.

    The decorated object is returned unchanged. Registering a name that exists warns, naming
    both sources, and the new one wins.

    >>> import embedflow as ef
    >>> @ef.register("doc.shout")
    ... def shout(text: str) -> str:
    ...     return text.upper()
    >>> ef.dc(["hi"]).doc.shout().to_list()
    ['HI']
    """
    check_name(name)

    def decorator(obj: T) -> T:
        if not callable(obj):
            msg = f"@register({name!r}) needs a function or an Operator class, got {obj!r}"
            raise TypeError(msg)
        _read_entry_points()
        with _lock:
            _add(_Entry(name, callable_name(obj), obj=obj))
        return obj

    return decorator


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (tests and notebooks redefining an operator)."""
    with _lock:
        _entries.pop(name, None)


def list_operators(pattern: str = "*") -> list[str]:
    """Names of the known operators matching the shell-style ``pattern``, naturally sorted.

    >>> import embedflow as ef
    >>> "normalize" in ef.list_operators()
    True
    """
    _read_entry_points()
    return sorted((n for n in _entries if fnmatch.fnmatchcase(n, pattern)), key=_natural_key)


def operator_source(name: str) -> str:
    """Where the operator ``name`` comes from (package and entry point, or module:function)."""
    _read_entry_points()
    return _entry(name).source


def namespaces() -> list[str]:
    """Every dotted prefix of a registered name (``image_embedding`` for ``image_embedding.timm``)."""
    _read_entry_points()
    out: set[str] = set()
    for name in _entries:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(out, key=_natural_key)


def children(prefix: str) -> list[str]:
    """The next name parts under ``prefix`` ('' for top level): operators and namespaces."""
    _read_entry_points()
    depth = prefix.count(".") + 1 if prefix else 0
    head = prefix + "." if prefix else ""
    return sorted({n.split(".")[depth] for n in _entries if n.startswith(head)}, key=_natural_key)


def is_operator(name: str) -> bool:
    """True if ``name`` is a registered operator."""
    _read_entry_points()
    return name in _entries


def is_namespace(name: str) -> bool:
    """True if some registered operator's name starts with ``name + '.'``."""
    _read_entry_points()
    head = name + "."
    return any(n.startswith(head) for n in _entries)


def _entry(name: str) -> _Entry:
    entry = _entries.get(name)
    if entry is None:
        raise unknown_operator_error(name)
    return entry


def unknown_operator_error(name: str) -> UnknownOperatorError:
    """The error for a name nothing registered, with close matches and installed namespaces."""
    _read_entry_points()
    known = list(_entries)
    hint = did_you_mean(name, known)
    spaces = ", ".join(namespaces()) or "none"
    msg = (
        f"unknown operator {name!r}.{hint} Installed namespaces: {spaces}. "
        "See embedflow.list_operators() for every name; an operator from another package "
        "appears once that package is installed (it publishes the entry-point group "
        f"{ENTRY_POINT_GROUP!r})."
    )
    return UnknownOperatorError(msg)


def get_operator(name: str) -> Any:
    """The function or :class:`~embedflow.Operator` class registered as ``name``.

    An entry point is imported on first use; an import failure names the entry point and the
    package that declared it.

    >>> import embedflow as ef
    >>> ef.get_operator("normalize").__name__
    'Normalize'
    """
    _read_entry_points()
    with _lock:
        entry = _entry(name)
        if entry.obj is None and entry.target is not None:
            entry.obj = _load(entry)
        return entry.obj


def _load(entry: _Entry) -> Any:
    module_name, _, attr = (entry.target or "").partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except Exception as exc:
        msg = (
            f"operator {entry.name!r} could not be loaded from {entry.source}: "
            f"{type(exc).__name__}: {exc}. Reinstall or upgrade that package "
            "(pip install --upgrade <package>)."
        )
        raise OperatorLoadError(msg) from exc
    return obj
