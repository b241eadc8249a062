"""Turn an operator name, its parameters and its selectors into a validated plan step.

Parameters are checked against the operator's signature when the chain is built, so a
misspelt keyword fails before any model loads.

>>> from embedflow.binding import bind_operator
>>> step = bind_operator("normalize", {"p": 1}, None, None)
>>> step.params
{'p': 1}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .errors import ParameterError, did_you_mean
from .operator import FunctionOperator, Operator, is_operator_class
from .plan import EXECUTION_OPTIONS, Apply, ExecOptions
from .registry import get_operator


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


def check_params(name: str, obj: Any, params: dict[str, Any], n_inputs: int) -> None:
    """Raise :class:`ParameterError` unless ``obj`` accepts ``params`` (and ``n_inputs`` inputs)."""
    is_class = is_operator_class(obj) or inspect.isclass(obj)
    sig = _signature(obj)
    args = () if is_class else (None,) * n_inputs
    try:
        sig.bind(*args, **params)
    except TypeError as exc:
        accepted = [
            p.name
            for p in list(sig.parameters.values())[len(args) :]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        unknown = [k for k in params if k not in sig.parameters]
        hint = did_you_mean(unknown[0], accepted) if unknown else ""
        bad = f"unexpected parameter {unknown[0]!r}" if unknown else str(exc)
        msg = (
            f"{name}(): {bad}.{hint} Valid parameters: {signature_text(obj, len(args))}. "
            f"Execution options for any operator: {', '.join(EXECUTION_OPTIONS)}."
        )
        raise ParameterError(msg) from exc


def make_factory(obj: Any, params: dict[str, Any]) -> Callable[[], Operator]:
    """A zero-argument callable that builds a fresh operator instance from ``obj`` and ``params``."""
    if is_operator_class(obj):
        return lambda: obj(**params)
    if inspect.isclass(obj):  # a plain class with __call__: instantiate, then call per item
        return lambda: FunctionOperator(obj(**params))
    if isinstance(obj, Operator):  # an instance handed to .map(): it is its own prototype
        return lambda: obj
    return lambda: FunctionOperator(obj, params)


def bind_operator(
    name: str,
    kwargs: dict[str, Any],
    inputs: tuple[str, ...] | None,
    outputs: tuple[str, ...] | None,
    *,
    on_error: str = "raise",
    obj: Any = None,
) -> Apply:
    """Build the :class:`~embedflow.plan.Apply` step for operator ``name`` called with ``kwargs``.

    ``obj`` overrides the registry lookup (``.map(fn)`` passes its function). Execution options
    are split off; the rest are validated against the operator's signature, then one instance is
    created (cheap by contract) so the operator's own checks run now too.
    """
    params = dict(kwargs)
    options = ExecOptions.from_kwargs(name, params)
    if obj is None:
        obj = get_operator(name)
    n_inputs = len(inputs) if inputs else 1
    if not isinstance(obj, Operator):
        check_params(name, obj, params, n_inputs)
    elif params:
        msg = f"{name}(): an operator instance takes no parameters, got {sorted(params)}"
        raise ParameterError(msg)
    factory = make_factory(obj, params)
    try:
        prototype = factory()
    except (TypeError, ValueError) as exc:
        msg = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
        raise ParameterError(msg) from exc
    if hasattr(prototype, "__dict__") and isinstance(prototype, Operator):
        prototype.__dict__.setdefault("_embedflow_params", params)
    return Apply(
        name=name,
        operator=prototype,
        factory=factory,
        params=params,
        inputs=inputs,
        outputs=outputs,
        options=options,
        on_error=on_error,
    )
