"""The DataCollection: a lazy, immutable chain of steps over rows (the public DSL).

Each call returns a new collection with one more plan node; nothing runs until a sink
(iteration, ``to_list``, ``to_numpy``, ``to_parquet`` ...: see :mod:`.outputs`) pulls rows.
Unknown operator names and bad parameters fail when the chain is built. The collection is a
facade: it builds plans (:mod:`embedflow.plan`) and hands them to an engine with a sink.

>>> import embedflow as ef
>>> squares = ef.dc(range(4)).map(lambda x: x * x)
>>> squares.to_list()
[0, 1, 4, 9]
>>> ef.dc["text"](["a", "bb"]).map["text", "n"](len).to_list()
[{'text': 'a', 'n': 1}, {'text': 'bb', 'n': 2}]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from .. import registry
from ..errors import ColumnError, ParameterError, PlanError, UnknownOperatorError, did_you_mean
from ..io.sources import Source
from ..operator import FunctionOperator, Operator, is_operator_class
from ..plan import EXECUTION_OPTIONS, REDUCERS, Batch, Filter, FlatMap, Group, Head, Plan, Project, RunSettings, Step, Whole, bind_operator
from ..views.projection import METHODS, Projector
from .chunking import TextsOnly, TokenChunks
from .dispatch import OperatorRef
from .outputs import Outputs
from .selectors import Selectable, column_list, io_selectors
from .settings import Settings


class DataCollection(Outputs, Settings):
    """A lazy, immutable chain of steps; create one with ``ef.dc``, ``ef.glob`` or a reader.

    >>> import embedflow as ef
    >>> ef.dc([3, 1, 2]).map(str).to_list()
    ['3', '1', '2']
    """

    __slots__ = ("_plan", "_named", "_columns", "_on_error", "_settings")

    def __init__(
        self, plan: Plan, named: bool = False, columns: tuple[str, ...] | None = None, on_error: str = "raise", settings: RunSettings | None = None
    ):
        self._plan = plan
        self._named = named
        self._columns = columns
        self._on_error = on_error
        self._settings = settings or RunSettings()

    @classmethod
    def from_source(cls, source: Source) -> DataCollection:
        """A collection that reads ``source``."""
        return cls(Plan(source), source.named, source.columns)

    # ---- internals -------------------------------------------------------------------
    def _with(
        self,
        step: Step | None = None,
        *,
        named: bool | None = None,
        columns: Any = "same",
        plan: Plan | None = None,
        settings: RunSettings | None = None,
        on_error: str | None = None,
    ) -> DataCollection:
        new_plan = plan or self._plan
        if step is not None:
            new_plan = new_plan.then(step)
        columns = self._columns if columns == "same" else columns
        named = self._named if named is None else named
        return DataCollection(new_plan, named, columns, on_error or self._on_error, settings or self._settings)

    @property
    def plan(self) -> Plan:
        """The logical plan (frozen dataclasses) this collection runs."""
        return self._plan

    @property
    def settings(self) -> RunSettings:
        """How a sink will run the plan, as said so far (engine, progress, failures' target).

        >>> import embedflow as ef
        >>> ef.dc([1]).set_engine("ray").settings.engine  # nothing is checked or imported yet
        'ray'
        """
        return self._settings

    @property
    def named(self) -> bool:
        """True when rows are dicts of named columns."""
        return self._named

    @property
    def columns(self) -> tuple[str, ...] | None:
        """The column names, when known before running (named mode); else ``None``."""
        return self._columns

    def _check_inputs(self, where: str, inputs: tuple[str, ...] | None) -> None:
        if inputs is None:
            return
        if not self._named:
            msg = (
                f"{where}[{', '.join(map(repr, inputs))}]: column selectors need named rows; "
                "name the source's column first, e.g. ef.dc['text'](items) or ef.glob['path'](pattern)"
            )
            raise ColumnError(msg)
        for col in inputs if self._columns is not None else ():
            if col not in self._columns:  # type: ignore[operator]
                msg = f"{where}: no column {col!r}.{did_you_mean(col, self._columns or ())} Columns so far: {list(self._columns or ())}"
                raise ColumnError(msg)

    def _columns_after(self, inputs: tuple[str, ...] | None, outputs: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if self._columns is None or inputs is None:
            return None if inputs is None and self._named else self._columns
        return tuple(dict.fromkeys(self._columns + (outputs or ())))

    def _apply(self, name: str, kwargs: dict[str, Any], key: Any, obj: Any = None) -> DataCollection:
        inputs, outputs = io_selectors(key, name) if key is not None else (None, None)
        if self._named and inputs is None and obj is None:
            cols = f" (columns: {', '.join(self._columns)})" if self._columns else ""
            msg = f"{name}: rows are named{cols}; say which column it reads and writes, e.g. dc.{name}['in_col', 'out_col'](...)"
            raise ColumnError(msg)
        self._check_inputs(name, inputs)
        step = bind_operator(name, kwargs, inputs, outputs, on_error=self._on_error, obj=obj)
        return self._with(step, columns=self._columns_after(inputs, outputs))

    # ---- operator dispatch -----------------------------------------------------------
    def __getattr__(self, name: str) -> OperatorRef:
        if name.startswith("_"):
            raise AttributeError(name)
        if registry.is_operator(name) or registry.is_namespace(name):
            return OperatorRef(self, name)
        candidates = registry.list_operators() + [n for n in dir(type(self)) if not n.startswith("_")]
        msg = (
            f"unknown operator {name!r}.{did_you_mean(name, candidates)} Installed namespaces: "
            f"{', '.join(registry.namespaces()) or 'none'}; see embedflow.list_operators() for every "
            "operator (another package's operators appear once it is installed)."
        )
        raise UnknownOperatorError(msg)

    def __dir__(self) -> list[str]:
        own = [n for n in dir(type(self)) if not n.startswith("_")]
        return sorted(set(own) | set(registry.children("")))

    # ---- generic steps -----------------------------------------------------------------
    @Selectable
    def map(self, fn: Callable[..., Any] | Operator, *, _key: Any = None, **options: Any) -> DataCollection:
        """Apply ``fn`` to each row (or to the selected columns) and keep what it returns.

        ``fn`` may be a function, an :class:`~embedflow.Operator` instance or an Operator class
        (instantiated without parameters). Execution options ``workers=`` (threads),
        ``batch_size=`` and ``device=`` (for batchable operators) are accepted.

        >>> import embedflow as ef
        >>> ef.dc["text"](["ab"]).map["text", "n"](len).to_list()
        [{'text': 'ab', 'n': 2}]
        """
        if not (callable(fn) or isinstance(fn, Operator)):
            msg = f"map() needs a function or an Operator, got {fn!r}"
            raise TypeError(msg)
        unknown = set(options) - set(EXECUTION_OPTIONS)
        if unknown:
            msg = f"map(): unexpected keyword {sorted(unknown)[0]!r}; map takes fn and the options {', '.join(EXECUTION_OPTIONS)} (bind other arguments with functools.partial)"
            raise ParameterError(msg)
        obj = fn if isinstance(fn, Operator) or is_operator_class(fn) else FunctionOperator(fn)
        return self._apply("map", options, _key, obj=obj)

    @Selectable
    def filter(self, fn: Callable[..., Any], *, _key: Any = None) -> DataCollection:
        """Keep the rows for which ``fn(row)`` (or ``fn(*selected columns)``) is true.

        >>> import embedflow as ef
        >>> ef.dc(range(6)).filter(lambda x: x % 2).to_list()
        [1, 3, 5]
        """
        inputs = column_list(_key, "filter") if _key is not None else None
        self._check_inputs("filter", inputs)
        return self._with(Filter(fn=fn, inputs=inputs, on_error=self._on_error))

    @Selectable
    def flat_map(self, fn: Callable[..., Iterable[Any]], *, _key: Any = None) -> DataCollection:
        """Replace each row with every item of the iterable ``fn`` returns for it.

        >>> import embedflow as ef
        >>> ef.dc(["a b", "c"]).flat_map(str.split).to_list()
        ['a', 'b', 'c']
        """
        inputs, outputs = io_selectors(_key, "flat_map") if _key is not None else (None, None)
        self._check_inputs("flat_map", inputs)
        step = FlatMap(fn=fn, inputs=inputs, outputs=outputs, on_error=self._on_error)
        return self._with(step, columns=self._columns_after(inputs, outputs))

    @Selectable
    def project(self, dim: int = 2, method: str = "pca", *, _key: Any = None) -> DataCollection:
        """Project every vector to ``dim`` (2 or 3) dimensions to look at them: a step that
        waits for the whole stream, then emits each row with its point. ``method`` is ``pca``
        (numpy only), ``tsne`` (scikit-learn) or ``umap`` (umap-learn).

        >>> import embedflow as ef, numpy as np
        >>> ef.dc([np.array([0.0, 0, 0]), np.array([1.0, 1, 0]), np.array([2.0, 2, 1])]).project(dim=2).to_numpy().shape
        (3, 2)
        """
        if dim not in (1, 2, 3) or isinstance(dim, bool):
            msg = f"project(dim={dim!r}): use 2 or 3 (or 1)"
            raise PlanError(msg)
        if method not in METHODS:
            msg = f"project(method={method!r}): use one of {', '.join(METHODS)}"
            raise PlanError(msg)
        inputs, outputs = io_selectors(_key, "project") if _key is not None else (None, None)
        self._check_inputs("project", inputs)
        step = Whole(name="project", fn=Projector(dim, method, inputs, outputs), inputs=inputs, outputs=outputs, on_error=self._on_error)
        return self._with(step, columns=self._columns_after(inputs, outputs))

    @Selectable
    def chunk(self, model_name: str, max_tokens: int | None = None, overlap: int = 0, *, _key: Any = None) -> DataCollection:
        """Split each text into parts of at most ``max_tokens`` tokens of ``model_name``'s
        tokenizer (default: what the model takes), consecutive parts sharing ``overlap``
        tokens; each part is a row of its own, next to its parent's other columns. Name two
        outputs to keep each part's index: ``.chunk["text", ("part", "index")](...)``. Join the
        parts back with :meth:`group`.

        >>> import embedflow as ef
        >>> ef.dc(["one two three four five"]).chunk("sentence-transformers/all-MiniLM-L6-v2", max_tokens=2).to_list()
        ['one two', 'three four', 'five']
        """
        inputs, outputs = io_selectors(_key, "chunk") if _key is not None else (None, None)
        self._check_inputs("chunk", inputs)
        if outputs is not None and len(outputs) > 2:
            msg = f"chunk: outputs {list(outputs)}: name one column (the part) or two (the part and its index)"
            raise PlanError(msg)
        chunks = TokenChunks(model_name, max_tokens, overlap)
        fn = chunks if outputs is not None and len(outputs) == 2 else TextsOnly(chunks)
        step = FlatMap(fn=fn, inputs=inputs, outputs=outputs, on_error=self._on_error)
        return self._with(step, columns=self._columns_after(inputs, outputs))

    def group(self, column: str | None = None, by: str | None = None, reduce: str = "mean") -> DataCollection:
        """Join the parts of each parent back into one row: consecutive rows made from one
        source row (by ``chunk`` or ``flat_map``) — or with the same value in column ``by`` —
        become one, whose ``column`` is the ``mean`` of their vectors (or the ``list`` of
        them, or the ``first``) and whose other columns are the first part's. Streams.

        >>> import embedflow as ef, numpy as np
        >>> parts = ef.dc(["ab", "c"]).flat_map(list).map(lambda ch: np.array([ord(ch)], float))
        >>> [v.tolist() for v in parts.group(reduce="mean").to_list()]
        [[97.5], [99.0]]
        """
        if reduce not in REDUCERS:
            msg = f"group: reduce={reduce!r} is not one of {', '.join(map(repr, REDUCERS))}"
            raise PlanError(msg)
        if self.named and column is None:
            msg = "group: name the column to join (group(column='vec'))"
            raise PlanError(msg)
        self._check_inputs("group", tuple(c for c in (column, by) if c is not None) or None)
        if not self.named:
            if by is not None:
                msg = "group: by= names a column; these rows have none (select columns with ef.dc['col'](...))"
                raise PlanError(msg)
            return self._with(Group(column="", by=None, reduce=reduce, on_error=self._on_error))
        return self._with(Group(column=cast(str, column), by=by, reduce=reduce, on_error=self._on_error))  # named: column given

    def batch(self, n: int) -> DataCollection:
        """Group consecutive rows into lists of ``n`` rows (the last may be shorter).

        >>> import embedflow as ef
        >>> ef.dc(range(5)).batch(2).to_list()
        [[0, 1], [2, 3], [4]]
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            msg = f"batch(n={n!r}): n must be a positive integer"
            raise PlanError(msg)
        return self._with(Batch(size=n, on_error=self._on_error), named=False, columns=None)

    def head(self, n: int) -> DataCollection:
        """Only the first ``n`` rows; upstream steps stop reading once they are out.

        >>> import embedflow as ef
        >>> ef.dc(range(10 ** 9)).head(3).to_list()
        [0, 1, 2]
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            msg = f"head(n={n!r}): n must be a non-negative integer"
            raise PlanError(msg)
        return self._with(Head(n=n, on_error=self._on_error))

    @Selectable
    def select(self, *, _key: Any = None) -> DataCollection:
        """Keep only the named columns, in that order: ``dc.select["path", "vec"]()``.

        >>> import embedflow as ef
        >>> ef.dc["a"]([1]).map["a", "b"](str).select["b"]().to_list()
        [{'b': '1'}]
        """
        cols = self._project_columns("select", _key)
        return self._with(Project(columns=cols, keep=True, on_error=self._on_error), columns=cols)

    @Selectable
    def exclude(self, *, _key: Any = None) -> DataCollection:
        """Drop the named columns: ``dc.exclude["img"]()``.

        >>> import embedflow as ef
        >>> ef.dc["a"]([1]).map["a", "b"](str).exclude["a"]().to_list()
        [{'b': '1'}]
        """
        cols = self._project_columns("exclude", _key)
        left = tuple(c for c in self._columns if c not in cols) if self._columns is not None else None
        return self._with(Project(columns=cols, keep=False, on_error=self._on_error), columns=left)

    def _project_columns(self, where: str, key: Any) -> tuple[str, ...]:
        if key is None:
            msg = f"{where}() needs column names: dc.{where}['a', 'b']()"
            raise ColumnError(msg)
        cols = column_list(key, where)
        self._check_inputs(where, cols)
        return cols

    def __repr__(self) -> str:
        return f"<DataCollection: {len(self._plan.steps)} step(s), lazy>\n{self.explain()}"

    def __bool__(self) -> bool:
        msg = "the truth value of a DataCollection is ambiguous (it is lazy); use .to_list() or .head(1).to_list()"
        raise TypeError(msg)
