"""The logical plan: frozen nodes that hold only what the user said.

A plan is a source followed by steps, what identifies a row and the default device; how to run
it (engine, progress, failures' target) is :class:`~embedflow.plan.settings.RunSettings`, kept
apart and resolved only when a sink runs. Nodes carry no run state —
no loaded model, no operator instance built from a registry name — so a plan pickles as it
is and every engine builds its own operator replicas from the name and the parameters (see
:mod:`embedflow.plan.binding`). ``explain`` renders a plan as text; :mod:`.lowering` turns
it into the physical stages that engines run.

>>> import embedflow as ef
>>> print(ef.dc([1, 2, 3]).map(abs).head(2).plan.explain())  # the logical plan (a DataCollection adds the physical one)  # doctest: +NORMALIZE_WHITESPACE
DataCollection plan (nothing has run; device=auto)
  source  dc(list of 3)
  1 map   abs
  2 head  2
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import registry
from ..errors import PlanError, short_repr
from ..io.sources import Source
from ..operator import FunctionOperator, Operator, callable_name, is_operator_class

EXECUTION_OPTIONS = ("batch_size", "device", "workers", "dtype", "max_batch_tokens", "processes")
DTYPES = ("auto", "fp32", "fp16", "bf16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """Validate a device string: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``.

    >>> check_device("cuda:1")
    'cuda:1'
    """
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        msg = f"device={device!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        raise PlanError(msg)
    return device


@dataclass(frozen=True)
class ExecOptions:
    """Execution options of one step as the user gave them; ``None`` means "not said"."""

    batch_size: int | None = None
    device: str | None = None
    workers: int | None = None  # threads for preprocess (decode, tokenize)
    dtype: str | None = None  # auto | fp32 | fp16 | bf16 (autocast on the device)
    max_batch_tokens: int | None = None  # cap on padded tokens per batch (with sort_key)
    processes: int | None = None  # worker processes preparing a model step's items (0: threads only)

    @classmethod
    def from_kwargs(cls, step: str, kwargs: dict[str, Any]) -> ExecOptions:
        """Pop and validate the execution options out of a call's keyword arguments."""
        values = {k: kwargs.pop(k) for k in EXECUTION_OPTIONS if k in kwargs}
        for key in ("batch_size", "workers", "max_batch_tokens"):
            value = values.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                msg = f"{step}: {key}={value!r} must be a positive integer, e.g. {key}=32"
                raise PlanError(msg)
        processes = values.get("processes")
        if processes is not None and (not isinstance(processes, int) or isinstance(processes, bool) or processes < 0):
            msg = f"{step}: processes={processes!r} must be 0 (prepare in threads) or a number of worker processes, e.g. processes=8"
            raise PlanError(msg)
        if values.get("device") is not None:
            check_device(values["device"])
        dtype = values.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            msg = f"{step}: dtype={dtype!r} is not one of {', '.join(map(repr, DTYPES))}"
            raise PlanError(msg)
        return cls(**values)

    def given(self) -> dict[str, Any]:
        """The options that were set, as keyword arguments."""
        return {k: getattr(self, k) for k in EXECUTION_OPTIONS if getattr(self, k) is not None}


# Steps compare by identity (eq=False): an engine may keep state for a step node (a loaded
# model) outside the plan, keyed by the node itself.
@dataclass(frozen=True, eq=False)
class Step:
    """Base of every step; ``on_error`` is ``"raise"`` or ``"skip"`` (after ``.safe()``)."""

    on_error: str = field(default="raise", kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    @property
    def label(self) -> str:
        """The name failures and statistics use for this step."""
        return self.kind

    def describe(self) -> str:  # pragma: no cover - every subclass overrides
        return ""


def _io(inputs: tuple[str, ...] | None, outputs: tuple[str, ...] | None) -> str:
    if inputs is None:
        return ""
    out = f"  {', '.join(inputs)}"
    if outputs is not None:
        out += f" -> {', '.join(outputs)}"
    return out


@dataclass(frozen=True, eq=False)
class Apply(Step):
    """Run an operator on every row.

    ``name`` is the registry name (or ``"map"``); ``target`` is what ``.map()`` was given (a
    function, an Operator class or instance) and ``None`` for a registered operator, which
    engines look up by name.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    options: ExecOptions = ExecOptions()
    target: Any = None

    @property
    def kind(self) -> str:
        return "op" if self.name != "map" else "map"

    @property
    def label(self) -> str:
        return self.name

    def describe(self) -> str:
        if self.name == "map":
            fn = getattr(self.target, "fn", self.target)
            text = callable_name(fn).split(":")[-1]
        else:
            args = ", ".join(f"{k}={short_repr(v, 40)}" for k, v in self.params.items())
            text = f"{self.name}({args})"
        options = self.options.given()
        cls = operator_class(self)
        if cls.batchable:
            options["batch_size"] = self.options.batch_size or cls.default_batch_size
            text += "  [batched]"
        opts = " ".join(f"{k}={v}" for k, v in sorted(options.items(), key=lambda kv: EXECUTION_OPTIONS.index(kv[0])))
        return text + _io(self.inputs, self.outputs) + (f"  {opts}" if opts else "")


def operator_class(step: Apply) -> type[Operator]:
    """The Operator class a step runs, without building it: what lowering needs to know
    (``batchable``, ``threaded``, ``default_batch_size``, ``sort_key``)."""
    target = step.target if step.target is not None else registry.get_operator(step.name)
    if isinstance(target, Operator):
        return type(target)
    if is_operator_class(target):
        return target
    return FunctionOperator


@dataclass(frozen=True, eq=False)
class Filter(Step):
    """Keep the rows for which ``fn`` is true."""

    fn: Callable[..., Any]
    inputs: tuple[str, ...] | None = None

    def describe(self) -> str:
        return callable_name(self.fn).split(":")[-1] + _io(self.inputs, None)


@dataclass(frozen=True, eq=False)
class FlatMap(Step):
    """Replace each row by the rows of the iterable ``fn`` returns."""

    fn: Callable[..., Any]
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        return "flat_map"

    def describe(self) -> str:
        return callable_name(self.fn).split(":")[-1] + _io(self.inputs, self.outputs)


@dataclass(frozen=True, eq=False)
class Batch(Step):
    """Group consecutive rows into lists of ``size`` (the last may be shorter)."""

    size: int

    def describe(self) -> str:
        return str(self.size)


REDUCERS = ("mean", "list", "first")


@dataclass(frozen=True, eq=False)
class Group(Step):
    """Join consecutive rows of one parent into one row (the parts of one text, the frames of
    one video): rows from the same source row (``by=None``: what ``chunk`` or ``flat_map``
    made of it), or with the same value in column ``by``. ``column`` becomes the mean of the
    rows' vectors, their list, or the first; the other columns are the first row's. Streams:
    a group ends where the parent changes."""

    column: str
    by: str | None = None
    reduce: str = "mean"

    def describe(self) -> str:
        return f"{self.reduce} of {self.column} by {self.by or 'source row'}"


@dataclass(frozen=True, eq=False)
class Head(Step):
    """Stop after ``n`` rows."""

    n: int

    def describe(self) -> str:
        return str(self.n)


@dataclass(frozen=True, eq=False)
class Project(Step):
    """Keep (``select``) or drop (``exclude``) columns of named rows."""

    columns: tuple[str, ...]
    keep: bool = True

    @property
    def kind(self) -> str:
        return "select" if self.keep else "exclude"

    def describe(self) -> str:
        return ", ".join(self.columns)


@dataclass(frozen=True, eq=False)
class Whole(Step):
    """A step that needs every row at once (a projection): ``fn(rows) -> rows``."""

    name: str
    fn: Callable[[list[Any]], list[Any]]
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        return self.name

    def describe(self) -> str:
        return repr(self.fn) + _io(self.inputs, self.outputs) + "  (waits for every row)"


@dataclass(frozen=True)
class Plan:
    """A source and its steps: what to compute. Immutable: ``then`` returns a new plan.

    ``source_errors`` is the error policy for reading the source itself (a line that is not
    UTF-8, a JSON line that does not parse): ``.safe()`` before any step sets it to skip.
    ``key`` names the column that identifies a row (None: the source's own key column, else
    the row number).
    """

    source: Source
    steps: tuple[Step, ...] = ()
    device: str = "auto"  # the device of model steps that name none
    source_errors: str = "raise"
    key: str | None = None

    def then(self, step: Step) -> Plan:
        return replace(self, steps=(*self.steps, step))

    @property
    def key_column(self) -> str | None:
        """The column that identifies a row, or None for the row number."""
        return self.key or self.source.key_column

    @property
    def expands(self) -> bool:
        """Whether one source row may reach the sink as several rows (``chunk`` or
        ``flat_map`` with no ``group`` or ``batch`` after it); a sink then keys each by its
        parent's key and its index (``3#0``, ``3#1``)."""
        made = gathered = -1
        for i, step in enumerate(self.steps):
            if isinstance(step, FlatMap):
                made = i
            elif isinstance(step, (Group, Batch)):
                gathered = i
        return made > gathered

    def explain(self) -> str:
        lines = [f"DataCollection plan (nothing has run; device={self.device})"]
        lines.append(f"  source  {self.source.describe()}")
        for i, step in enumerate(self.steps, 1):
            safe = "  (safe: failures skipped and recorded)" if step.on_error == "skip" else ""
            lines.append(f"  {i} {step.kind:<6} {step.describe()}{safe}".rstrip())
        return "\n".join(lines)
