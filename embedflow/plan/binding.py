"""Operator name + parameters -> a validated plan step, and a step -> a fresh operator.

Parameters are checked when the chain is built, before any model loads: names against the
operator's signature, values against its type hints, strictly (the string ``"false"`` is not
a bool, ``"2"`` is not a number), then the operator is built once so its own checks run too.
That instance is thrown away: a step keeps only the name and the parameters, and each engine
builds its own replicas with :func:`instantiate`.

>>> from embedflow.plan.binding import bind_operator
>>> step = bind_operator("normalize", {"p": 1}, None, None)
>>> step.params
{'p': 1}
"""

from __future__ import annotations

import copy
import inspect
import types
import typing
import warnings
from typing import Any

from .. import registry
from ..errors import ParameterError, did_you_mean, short_repr, user_stacklevel
from ..operator import FunctionOperator, Operator, is_operator_class
from .nodes import EXECUTION_OPTIONS, Apply, ExecOptions


def signature_text(obj: Any, skip_inputs: int = 0) -> str:
    """The parameters of an operator as ``name=default`` text (inputs of a function skipped).

    >>> def f(text, suffix="!"): ...
    >>> signature_text(f, skip_inputs=1)
    "suffix='!'"
    """
    params = list(_signature(obj).parameters.values())[skip_inputs:]
    parts = []
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.kind is p.VAR_POSITIONAL:
            continue
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            parts.append(f"{p.name}={p.default!r}")
    return ", ".join(parts) or "(no parameters)"


def _signature(obj: Any) -> inspect.Signature:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # builtins without a signature
        return inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL)])


def _hints(obj: Any) -> dict[str, Any]:
    """Type hints of a function or of a class's ``__init__``; unresolvable ones are left out."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - a hint naming something not importable: check names only
        return {}


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping", list: "a list"}


def expected(hint: Any) -> str:
    """A type hint in words, for messages.

    >>> expected(int | None), expected(list[str])
    ('an integer or null', 'a list of a string')
    """
    if hint in _TYPE_WORDS:
        return _TYPE_WORDS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [expected(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin in (list, tuple, set, frozenset) and args:
        return f"a list of {expected(args[0])}"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    return f"a {getattr(hint, '__name__', str(hint))}"


def check_values(name: str, obj: Any, params: dict[str, Any]) -> None:
    """Raise :class:`ParameterError` when a value does not match its parameter's type hint.

    Strict: no value is converted (``"false"`` is not a bool, ``"2"`` not a number); an int
    is accepted where a float is expected.

    >>> def f(text: str, scale: float = 1.0, flag: bool = False): ...
    >>> check_values("f", f, {"scale": 2, "flag": True})
    >>> check_values("f", f, {"flag": "false"})
    Traceback (most recent call last):
    ...
    embedflow.errors.ParameterError: f(): flag='false' must be true or false, not a str (write true or false without quotes in YAML, True or False in Python).
    """
    hints = _hints(obj)
    checked = {k: v for k, v in params.items() if k in hints and hints[k] is not Any}
    if not checked:
        return
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    config = ConfigDict(strict=True, arbitrary_types_allowed=True)
    for key, value in checked.items():
        try:
            TypeAdapter(hints[key], config=config).validate_python(value)
        except ValidationError:
            fix = " (write true or false without quotes in YAML, True or False in Python)" if hints[key] in (bool, bool | None) else ""
            msg = f"{name}(): {key}={short_repr(value, 60)} must be {expected(hints[key])}, not a {type(value).__name__}{fix}."
            raise ParameterError(msg) from None
        except Exception:  # noqa: BLE001, S112 - a hint pydantic cannot build a validator for: names only
            continue


def check_params(name: str, obj: Any, params: dict[str, Any], n_inputs: int) -> None:
    """Raise :class:`ParameterError` unless ``obj`` accepts ``params`` (and ``n_inputs`` inputs)."""
    is_class = is_operator_class(obj) or inspect.isclass(obj)
    sig = _signature(obj)
    args = () if is_class else (None,) * n_inputs
    try:
        sig.bind(*args, **params)
    except TypeError as exc:
        accepted = [p.name for p in list(sig.parameters.values())[len(args) :] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [k for k in params if k not in sig.parameters]
        hint = did_you_mean(unknown[0], accepted) if unknown else ""
        bad = f"unexpected parameter {unknown[0]!r}" if unknown else str(exc)
        msg = (
            f"{name}(): {bad}.{hint} Valid parameters: {signature_text(obj, len(args))}. "
            f"Execution options for any operator: {', '.join(EXECUTION_OPTIONS)}."
        )
        raise ParameterError(msg) from exc
    check_values(name, obj, params)


def _target(step: Apply) -> Any:
    return step.target if step.target is not None else registry.get_operator(step.name)


def instantiate(step: Apply, copy_instance: bool = False) -> Operator:
    """A fresh operator for ``step``: built from the registry name (or the ``.map`` target) and
    the step's parameters. An Operator instance given to ``.map`` is returned as it is, or as
    a deep copy with ``copy_instance`` (a second replica must not share the first one's model).
    """
    obj = _target(step)
    if isinstance(obj, Operator):
        return copy.deepcopy(obj) if copy_instance else obj
    if is_operator_class(obj):
        return obj(**step.params)
    if inspect.isclass(obj):  # a plain class with __call__: instantiate, then call per item
        return FunctionOperator(obj(**step.params))  # type: ignore[arg-type]  # its instances are callable (checked at binding)
    return FunctionOperator(obj, step.params)


def renamed(name: str, renames: dict[str, str], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with each old parameter name (a key of ``renames``) replaced by its new one,
    with a FutureWarning naming the new spelling; an old and a new name given together are an
    error — they set one thing.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     renamed("op", {"old": "new"}, {"old": 2, "x": 1})
    {'x': 1, 'new': 2}
    >>> str(caught[0].message)
    'op(): old= is deprecated and will be removed; it is new= now (the same setting): write new=2'
    """
    params = dict(kwargs)
    for old, new in renames.items():
        if old not in params:
            continue
        value = params.pop(old)
        if new in params:
            msg = f"{name}(): {old}={value!r} and {new}={params[new]!r} set one thing ({old}= is {new}='s old name); give {new}= only"
            raise ParameterError(msg)
        params[new] = value
        warnings.warn(
            f"{name}(): {old}= is deprecated and will be removed; it is {new}= now (the same setting): write {new}={value!r}",
            FutureWarning,
            stacklevel=user_stacklevel(),
        )
    return params


def bind_operator(
    name: str,
    kwargs: dict[str, Any],
    inputs: tuple[str, ...] | None,
    outputs: tuple[str, ...] | None,
    *,
    on_error: str = "raise",
    obj: Any = None,
) -> Apply:
    """The :class:`~embedflow.plan.nodes.Apply` step for operator ``name`` called with ``kwargs``.

    ``obj`` is what ``.map()`` was given (a function or an Operator class or instance); without
    it the operator comes from the registry. Execution options are split off; the rest are
    validated against the operator's signature and type hints, then one instance is built (cheap
    by contract) so the operator's own checks run now too.
    """
    target = obj if obj is not None else registry.get_operator(name)
    params = renamed(name, getattr(target, "renamed_params", None) or {}, kwargs)
    options = ExecOptions.from_kwargs(name, params)
    n_inputs = len(inputs) if inputs else 1
    if not isinstance(target, Operator):
        check_params(name, target, params, n_inputs)
    elif params:
        msg = f"{name}(): an operator instance takes no parameters, got {sorted(params)}"
        raise ParameterError(msg)
    if options.processes and not getattr(target, "batchable", False):
        msg = (
            f"{name}(): processes={options.processes} prepares a model step's items in worker processes, and {name} is not a "
            "model step (it is not batchable); use workers= for its threads"
        )
        raise ParameterError(msg)
    step = Apply(name=name, params=params, inputs=inputs, outputs=outputs, options=options, target=obj, on_error=on_error)
    if not isinstance(target, Operator):
        try:
            instantiate(step)
        except (TypeError, ValueError) as exc:
            msg = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
            raise ParameterError(msg) from exc
    return step
