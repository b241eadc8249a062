"""The logical plan: frozen dataclass nodes that a DataCollection appends and an engine runs.

A plan is a source followed by steps. Nodes never run anything themselves; ``explain`` renders
them as text.

>>> import embedflow as ef
>>> print(ef.dc([1, 2, 3]).map(abs).head(2).explain())  # doctest: +NORMALIZE_WHITESPACE
DataCollection plan (nothing has run; device=auto, engine=local)
  source  dc(list of 3)
  1 map   abs
  2 head  2
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import PlanError, short_repr
from .operator import Operator, callable_name

EXECUTION_OPTIONS = ("batch_size", "device", "workers", "dtype", "max_batch_tokens")
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
    """Execution options of one step; ``None`` means "the engine decides"."""

    batch_size: int | None = None
    device: str | None = None
    workers: int | None = None  # threads for preprocess (decode, tokenize)
    dtype: str | None = None  # auto | fp32 | fp16 | bf16 (autocast on the device)
    max_batch_tokens: int | None = None  # cap on padded tokens per batch (with sort_key)

    @classmethod
    def from_kwargs(cls, step: str, kwargs: dict[str, Any]) -> ExecOptions:
        """Pop and validate the execution options out of a call's keyword arguments."""
        values = {k: kwargs.pop(k) for k in EXECUTION_OPTIONS if k in kwargs}
        for key in ("batch_size", "workers", "max_batch_tokens"):
            value = values.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                msg = f"{step}: {key}={value!r} must be a positive integer, e.g. {key}=32"
                raise PlanError(msg)
        if values.get("device") is not None:
            check_device(values["device"])
        dtype = values.get("dtype")
        if dtype is not None and dtype not in ("auto", "fp32", "fp16", "bf16"):
            msg = f"{step}: dtype={dtype!r} is not one of 'auto', 'fp32', 'fp16', 'bf16'"
            raise PlanError(msg)
        return cls(**values)


@dataclass(frozen=True)
class Source:
    """Where rows come from. ``open()`` returns a fresh iterator of rows for each run."""

    kind: str
    label: str
    open: Callable[[], Iterator[Any]] = field(repr=False, compare=False)
    named: bool = False
    columns: tuple[str, ...] | None = None  # known column names in named mode, else None
    spec: dict[str, Any] | None = field(default=None, compare=False)  # its YAML form, if any
    keyed: bool = False  # open() yields (row number, row) pairs instead of rows (resumed runs)
    # for file sources: the file cut into picklable ranges, each yielding (row number, row)
    # pairs, for engines that read on other processes (see io/parts.py); None: one stream only
    parts: Callable[[], Sequence[Callable[[], Iterator[tuple[int, Any]]]]] | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        cols = f" -> {', '.join(self.columns)}" if self.named and self.columns else ""
        return f"{self.label}{cols}"


@dataclass(frozen=True)
class Step:
    """Base of every step; ``on_error`` is ``"raise"`` or ``"skip"`` (after ``.safe()``)."""

    on_error: str = field(default="raise", kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    def describe(self) -> str:  # pragma: no cover - every subclass overrides
        return ""


def _io(inputs: tuple[str, ...] | None, outputs: tuple[str, ...] | None) -> str:
    if inputs is None:
        return ""
    out = f"  {', '.join(inputs)}"
    if outputs is not None:
        out += f" -> {', '.join(outputs)}"
    return out


@dataclass(frozen=True)
class Apply(Step):
    """Run an operator on every row (a registered operator or a ``.map`` function)."""

    name: str
    operator: Operator = field(compare=False)
    factory: Callable[[], Operator] = field(repr=False, compare=False)  # fresh copies (replicas)
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    options: ExecOptions = ExecOptions()
    # per-run state kept with the node so a model is set up once per device, not once per run
    ready: dict[str, Operator] = field(default_factory=dict, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return "op" if self.name != "map" else "map"

    def describe(self) -> str:
        if self.name == "map":
            text = callable_name(getattr(self.operator, "fn", self.operator)).split(":")[-1]
        else:
            args = ", ".join(f"{k}={short_repr(v, 40)}" for k, v in self.params.items())
            text = f"{self.name}({args})"
        options = {k: getattr(self.options, k) for k in EXECUTION_OPTIONS}
        if self.operator.batchable:
            options["batch_size"] = self.options.batch_size or type(self.operator).default_batch_size
            text += "  [batched]"
        opts = " ".join(f"{k}={v}" for k, v in options.items() if v is not None)
        return text + _io(self.inputs, self.outputs) + (f"  {opts}" if opts else "")


@dataclass(frozen=True)
class Filter(Step):
    """Keep the rows for which ``fn`` is true."""

    fn: Callable[..., Any] = field(compare=False)
    inputs: tuple[str, ...] | None = None

    def describe(self) -> str:
        return callable_name(self.fn).split(":")[-1] + _io(self.inputs, None)


@dataclass(frozen=True)
class FlatMap(Step):
    """Replace each row by the rows of the iterable ``fn`` returns."""

    fn: Callable[..., Any] = field(compare=False)
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        return "flat_map"

    def describe(self) -> str:
        return callable_name(self.fn).split(":")[-1] + _io(self.inputs, self.outputs)


@dataclass(frozen=True)
class Batch(Step):
    """Group consecutive rows into lists of ``size`` (the last may be shorter)."""

    size: int

    def describe(self) -> str:
        return str(self.size)


@dataclass(frozen=True)
class Head(Step):
    """Stop after ``n`` rows."""

    n: int

    def describe(self) -> str:
        return str(self.n)


@dataclass(frozen=True)
class Project(Step):
    """Keep (``select``) or drop (``exclude``) columns of named rows."""

    columns: tuple[str, ...]
    keep: bool = True

    @property
    def kind(self) -> str:
        return "select" if self.keep else "exclude"

    def describe(self) -> str:
        return ", ".join(self.columns)


@dataclass(frozen=True)
class Whole(Step):
    """A step that needs every row at once (a projection): ``fn(rows) -> rows``."""

    name: str
    fn: Callable[[list[Any]], list[Any]] = field(compare=False)
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        return self.name

    def describe(self) -> str:
        return repr(self.fn) + _io(self.inputs, self.outputs) + "  (waits for every row)"


@dataclass(frozen=True)
class Plan:
    """A source, its steps, and run-wide settings. Immutable: ``then`` returns a new plan."""

    source: Source
    steps: tuple[Step, ...] = ()
    device: str = "auto"
    engine: str = "local"
    errors: Any = field(default=None, compare=False)  # where .safe() records failures
    progress: bool | None = None  # progress bar: None = only on a terminal

    def then(self, step: Step) -> Plan:
        return replace(self, steps=(*self.steps, step))

    def explain(self) -> str:
        lines = [f"DataCollection plan (nothing has run; device={self.device}, engine={self.engine})"]
        lines.append(f"  source  {self.source.describe()}")
        for i, step in enumerate(self.steps, 1):
            safe = "  (safe: failures skipped and recorded)" if step.on_error == "skip" else ""
            lines.append(f"  {i} {step.kind:<6} {step.describe()}{safe}".rstrip())
        return "\n".join(lines)
