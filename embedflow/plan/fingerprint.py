"""What shapes a chain's results, as one string: the half of an incremental run's key that is
not the row (:mod:`embedflow.io.content` is the other half).

Each step counts with its kind, operator name (and the package and version it comes from),
parameters, columns and ``dtype``; an operator registered in this process, or a function,
by its code (bytecode, constants, defaults and what its closure holds), not its name; a model
by its files (names, sizes, modification times: :func:`embedflow.models.files_identity`), as
its operator says through the ``weights_identity`` hook. Weights nothing identifies — a model
initialised at random, or an operator of another package without the hook — make the
fingerprint this process's own: its results are reused in this process only. The versions of
the libraries that compute the vectors count too.

>>> import embedflow as ef
>>> a = chain_fingerprint(ef.dc(["x"]).map(str.upper).plan)
>>> a == chain_fingerprint(ef.dc(["y"]).map(str.upper).plan)  # the rows are not part of it
True
>>> a == chain_fingerprint(ef.dc(["x"]).map(str.lower).plan)
False
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
import uuid
from importlib import metadata
from typing import Any

from .. import registry
from ..hooks import IdentifiesWeights
from ..operator import FunctionOperator, Operator
from .nodes import Apply, Batch, Filter, FlatMap, Group, Head, Plan, Project, Step, Whole, operator_class

FORMAT = "1"
LIBRARIES = ("embedflow", "numpy", "torch", "transformers", "tokenizers", "timm", "onnxruntime", "pillow", "open_clip_torch")
THIS_PROCESS = uuid.uuid4().hex  # for weights nothing identifies: reused in this process only


def chain_fingerprint(plan: Plan) -> str:
    """The fingerprint of ``plan``'s steps (see the module docstring): 32 hex digits."""
    parts: list[Any] = [FORMAT, plan.device, library_versions()]
    parts.extend(step_identity(step) for step in plan.steps)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:32]


def row_local(plan: Plan) -> str | None:
    """None when each source row's results depend on that row alone (so they can be reused
    for it), else the step that makes them depend on other rows.

    >>> import embedflow as ef
    >>> row_local(ef.dc([1]).map(abs).head(3).plan)
    'head(3)'
    """
    for step in plan.steps:
        if isinstance(step, Head):
            return f"head({step.n})"
        if isinstance(step, Batch):
            return f"batch({step.size})"
        if isinstance(step, Whole):
            return f"{step.name}()"
        if isinstance(step, Group) and step.by is not None:
            return f"group(by={step.by!r})"
    return None


@functools.cache
def library_versions() -> dict[str, str]:
    """The installed versions of the libraries that compute results."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def step_identity(step: Step) -> list[Any]:
    """What of ``step`` shapes its results."""
    if isinstance(step, Apply):
        dtype = step.options.dtype
        if step.target is not None:
            return ["apply", step.name, step.inputs, step.outputs, dtype, callable_identity(step.target), _canonical(step.params)]
        cls = operator_class(step)
        weights: str | None = ""  # an operator without a model: its parameters say it all
        if isinstance(cls, type) and issubclass(cls, IdentifiesWeights):
            weights = cls.weights_identity(step.params)
        elif getattr(cls, "batchable", False):  # a model nothing identifies
            weights = None
        source = registry.operator_source(step.name)  # a package's name and version
        code = "" if source.startswith("package ") else callable_identity(registry.get_operator(step.name))  # registered here: its code
        return [
            "op",
            step.name,
            source,
            code,
            _canonical(step.params),
            step.inputs,
            step.outputs,
            dtype,
            THIS_PROCESS if weights is None else weights,
        ]
    if isinstance(step, (Filter, FlatMap)):
        return [step.kind, callable_identity(step.fn), step.inputs, getattr(step, "outputs", None)]
    if isinstance(step, Project):
        return [step.kind, step.columns]
    if isinstance(step, Group):
        return ["group", step.column, step.by, step.reduce]
    if isinstance(step, Whole):
        return ["whole", step.name, callable_identity(step.fn), step.inputs, step.outputs]
    return [step.kind, step.describe()]


def callable_identity(fn: Any) -> str:
    """A function by its code, a callable object by its class's code and its repr; something
    nothing identifies (a default ``<... at 0x...>`` repr) by this process."""
    if isinstance(fn, FunctionOperator):
        return "fn:" + callable_identity(fn.fn) + _canonical(fn.params)
    if isinstance(fn, functools.partial):
        return "partial:" + callable_identity(fn.func) + repr((fn.args, sorted(fn.keywords.items())))
    if isinstance(fn, types.MethodType):
        return "method:" + callable_identity(fn.__func__) + callable_identity(fn.__self__)
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):
        closure = [_value_identity(c.cell_contents) for c in (fn.__closure__ or ()) if _filled(c)]
        return hashlib.sha256(repr((fn.__module__, fn.__qualname__, _code(code), repr(fn.__defaults__), closure)).encode()).hexdigest()
    if isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType, types.MethodDescriptorType, type)) and not _own_class(fn):
        return repr(fn)
    cls = fn if isinstance(fn, type) else type(fn)
    methods = [(name, _code(f.__code__)) for name, f in sorted(vars(cls).items()) if isinstance(f, types.FunctionType)]
    text = repr(fn) if not isinstance(fn, type) else cls.__qualname__
    if " at 0x" in text:  # a default repr: its state is unknown
        text = THIS_PROCESS + text.split(" at 0x")[0]
    if isinstance(fn, Operator) and not isinstance(fn, type):
        text += _value_identity({k: v for k, v in vars(fn).items() if not k.startswith("_")})
    return hashlib.sha256(repr((cls.__module__, cls.__qualname__, methods, text)).encode()).hexdigest()


def _own_class(obj: Any) -> bool:
    return isinstance(obj, type) and obj.__module__ not in ("builtins",)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _code(code: types.CodeType) -> tuple[Any, ...]:
    consts = tuple(_code(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return (code.co_code.hex(), consts, code.co_names)


def _value_identity(value: Any) -> str:
    if callable(value):
        return callable_identity(value)
    text = repr(value)
    return THIS_PROCESS if " at 0x" in text else text


def _canonical(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=_value_identity)
