"""The operator contract (docs/DESIGN.md §3) and the wrapper that makes a plain function one.

An operator turns one input item into one result. The engine owns threads, devices, batching
and ordering; an operator only says how to prepare an item, how to run a batch and how to split
the batch's output back into one result per item.

>>> import embedflow as ef
>>> class Shout(ef.Operator):
...     def preprocess(self, text):
...         return text.upper()
>>> ef.dc(["hi"]).map(Shout()).to_list()
['HI']
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, ClassVar

from .errors import short_repr


class Operator:
    """Base class of class-based operators.

    Lifecycle, driven by the engine:

    * ``__init__(**params)`` — cheap: validate and store parameters (it runs when the chain is
      built, so a bad value fails before any model loads).
    * ``setup(device)`` — load weights once per worker, on ``device`` (a string such as
      ``"cpu"`` or ``"cuda:0"``). Called before the first item.
    * ``setup_preprocess(device)`` — optional: load only what ``preprocess`` needs (a
      tokenizer, a transform), no weights, for a process that never runs ``forward``: Ray's
      CPU tasks preparing items for a model actor on ``device`` (a GPU).
    * ``preprocess(*inputs)`` — CPU work for one item (decode, tokenize); must be thread-safe.
      Receives one positional argument per input column.
    * ``preprocess_batch(list_of_input_tuples) -> list`` — optional: prepare several items
      in one call (a fast tokenizer's ``encode_batch``); must equal ``preprocess`` item by item.
      If it raises, the engine falls back to ``preprocess`` per item to find the bad one.
    * ``sort_key(prepared) -> int`` — optional: the size of a prepared item (token count) so
      batches of similar size pad little; ``padded_size(size) -> int`` — optional: the width
      a batch whose largest item has ``size`` is padded to (a few bucketed widths on a GPU),
      which the engine's token budget counts.
    * ``collate(prepared_items)`` — turn a list of prepared items into one batch (default:
      ``torch.stack`` for tensors, else the list itself). CPU side.
    * ``prepare_on_device(batch) -> batch`` — optional: device work before ``forward``
      (decode and resize images there); the engine runs it in a thread and on a CUDA stream of
      its own and hands the result to ``forward`` with an event, so ``forward`` takes tensors
      of fixed shapes (CUDA graphs) and never waits for it.
    * ``forward(batch)`` — the hot path, on the device; the engine has already moved the batch
      there and runs it under ``torch.inference_mode``.
    * ``postprocess(output) -> list`` — one result per input item, on the CPU (the engine moves
      the forward output back to the CPU first; half-precision floats arrive as float32).
    * ``run_warnings() -> list[str]`` — optional: what to tell the user once per run (texts
      cut to the length limit); an operator that counts such events in a ``run_counts``
      ``collections.Counter`` gets the counts of the processes that prepared for it too.
    * ``cast_weights(torch_dtype) -> bool`` — optional: cast the model's weights to fp16/bf16
      once and return True; the engine then runs ``forward`` without autocast.

    Operators with ``batchable = False`` only need ``preprocess``: its return value is the result.
    """

    batchable: ClassVar[bool] = False
    #: True: ``preprocess`` is real work that releases the GIL (decode): give it a thread pool.
    #: False: it is cheap and runs inline with the neighbouring steps (no per-item thread hop).
    threaded: ClassVar[bool] = True
    #: default batch size for batchable operators; the ``batch_size=`` option overrides it
    default_batch_size: ClassVar[int] = 32
    #: True: a string input may be a file path that ``preprocess`` opens (image_decode). A
    #: server then accepts such a column only as uploaded bytes or a path under its files root.
    reads_files: ClassVar[bool] = False
    #: worker processes the engine may prepare items in (``preprocess_batch``, beyond the
    #: GIL), for an operator of an installed package with ``setup_preprocess``: a number,
    #: ``"auto"`` (the engine decides: on a GPU all the cores but two; none on the CPU) or
    #: None (threads only). The workers prepare, sort, cut and collate whole windows, so the
    #: main process moves batches; errors still name or skip the row; a worker's
    #: ``run_counts`` are added to this operator's before ``run_warnings()``.
    preprocess_processes: int | str | None = None
    #: old parameter names and the one name each is now (``{"tokenizer_processes":
    #: "processes"}``): a step given an old name runs as if given the new one, with one
    #: FutureWarning that says the new spelling; both at once is an error.
    renamed_params: ClassVar[dict[str, str]] = {}
    #: True: ``forward`` can be recorded as a CUDA graph — the same input shapes launch the same
    #: kernels, no tensor is made from host data and nothing reads a device value back to the
    #: CPU (``embedflow.engines.capture_probe`` checks it, on any device). On CUDA the engine
    #: then replays it per input shape with one call (checked against the usual forward first).
    cuda_graphs: bool = False

    @classmethod
    def opens_files(cls, params: dict[str, Any]) -> bool:
        """Whether a step of this operator with ``params`` opens its string inputs as paths
        (default: ``reads_files``); an operator whose parameters decide it overrides this."""
        return cls.reads_files

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Fail now, with the fix, when what a step with ``params`` will need before its first
        row is missing (a database it reads); run by ``validate`` and before a run's work,
        without loading anything. Default: nothing to check."""

    def setup(self, device: str) -> None:
        """Load weights or other state once per worker; default does nothing."""

    def preprocess(self, *inputs: Any) -> Any:
        """Prepare one item on the CPU; default returns the single input unchanged."""
        return inputs[0] if len(inputs) == 1 else inputs

    def collate(self, items: list[Any]) -> Any:
        """Join prepared items into one batch for :meth:`forward` (tensors are stacked)."""
        torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
        if items and torch is not None and isinstance(items[0], torch.Tensor):
            return torch.stack(items)
        return items

    def forward(self, batch: Any) -> Any:
        """Run one batch; default returns it unchanged."""
        return batch

    def postprocess(self, output: Any) -> list[Any]:
        """Split a forward output into one result per item."""
        return list(output)

    def __repr__(self) -> str:
        """``Name(param=value, ...)`` for the ``__init__`` parameters that differ from their
        defaults, read from attributes of the same name (the scikit-learn convention)."""
        try:
            params: Iterable[inspect.Parameter] = inspect.signature(type(self).__init__).parameters.values()
        except (TypeError, ValueError):  # pragma: no cover - a C-level __init__
            params = []
        shown = []
        for p in params:
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(self, p.name):
                continue
            value = getattr(self, p.name)
            if _differs(value, p.default):
                shown.append(f"{p.name}={short_repr(value, 60)}")
        return f"{type(self).__name__}({', '.join(shown)})"


class FunctionOperator(Operator):
    """Adapts a plain function: inputs are its positional arguments, params its keywords.

    Functions run inline (no thread pool) unless the step asks for ``workers=``.

    >>> op = FunctionOperator(lambda text, suffix="!": text + suffix, {"suffix": "?"})
    >>> op.preprocess("hi")
    'hi?'
    """

    threaded = False

    def __init__(self, fn: Callable[..., Any], params: dict[str, Any] | None = None):
        self.fn = fn
        self.params = dict(params or {})

    def preprocess(self, *inputs: Any) -> Any:
        return self.fn(*inputs, **self.params)

    def __repr__(self) -> str:
        return f"FunctionOperator({callable_name(self.fn)})"


def _differs(value: Any, default: Any) -> bool:
    if default is inspect.Parameter.empty:
        return True
    if value is default:
        return False
    try:
        return bool(value != default)
    except Exception:  # noqa: BLE001 - arrays and other values without a plain truth value
        return True


def callable_name(fn: Any) -> str:
    """``module:qualname`` of a function or class, for messages and ``explain()``.

    >>> callable_name(len)
    'builtins:len'
    """
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__
    return f"{module}:{name}"


def is_operator_class(obj: Any) -> bool:
    """True for a subclass of :class:`Operator` (not an instance)."""
    return inspect.isclass(obj) and issubclass(obj, Operator)


_expected: ContextVar[Callable[[], int | None] | None] = ContextVar("embedflow_expected_items", default=None)


def expected_items() -> int | None:
    """How many rows the run now setting up an operator will read, when the source knows it
    (None: unknown, or a function called item by item): lets ``setup`` skip work a short run
    cannot win back, such as an ONNX export.

    >>> with expecting(lambda: 40):
    ...     expected_items()
    40
    >>> expected_items() is None
    True
    """
    count = _expected.get()
    return count() if count is not None else None


@contextlib.contextmanager
def expecting(count: Callable[[], int | None]) -> Iterator[None]:
    """What :func:`expected_items` answers inside the block: ``count()``, asked only by an
    operator that wants it (counting a file's lines costs a pass over it). An engine sets it
    around ``setup``."""
    token = _expected.set(functools.cache(count))  # asked by each replica, counted once
    try:
        yield
    finally:
        _expected.reset(token)
