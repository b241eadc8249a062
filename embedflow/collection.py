"""The DataCollection: a lazy, immutable chain of steps over rows (the public DSL).

Each call returns a new collection with one more plan node; nothing runs until a sink
(iteration, ``to_list``, ``to_numpy``, ``to_parquet`` ...) pulls rows. Unknown operator names
and bad parameters fail when the chain is built.

>>> import embedflow as ef
>>> squares = ef.dc(range(4)).map(lambda x: x * x)
>>> squares.to_list()
[0, 1, 4, 9]
>>> ef.dc["text"](["a", "bb"]).map["text", "n"](len).to_list()
[{'text': 'a', 'n': 1}, {'text': 'bb', 'n': 2}]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from . import registry
from .binding import bind_operator
from .dispatch import OperatorRef
from .engines import ENGINES, get_engine
from .errors import ColumnError, ParameterError, PlanError, UnknownOperatorError, did_you_mean
from .failures import FailureLog
from .operator import FunctionOperator, Operator, is_operator_class
from .plan import EXECUTION_OPTIONS, Batch, Filter, FlatMap, Head, Plan, Project, Source, Step, Whole, check_device
from .progress import progress_bar
from .scheduler import RunStats
from .selectors import Selectable, column_list, io_selectors


class DataCollection:
    """A lazy, immutable chain of steps; create one with ``ef.dc``, ``ef.glob`` or a reader.

    >>> import embedflow as ef
    >>> ef.dc([3, 1, 2]).map(str).to_list()
    ['3', '1', '2']
    """

    __slots__ = ("_plan", "_named", "_columns", "_on_error")

    def __init__(self, plan: Plan, named: bool = False, columns: tuple[str, ...] | None = None, on_error: str = "raise"):
        self._plan = plan
        self._named = named
        self._columns = columns
        self._on_error = on_error

    @classmethod
    def from_source(cls, source: Source) -> DataCollection:
        """A collection that reads ``source``."""
        return cls(Plan(source), source.named, source.columns)

    # ---- internals -------------------------------------------------------------------
    def _with(self, step: Step | None = None, *, named: bool | None = None, columns: Any = "same", plan: Plan | None = None) -> DataCollection:
        new_plan = plan or self._plan
        if step is not None:
            new_plan = new_plan.then(step)
        return DataCollection(
            new_plan,
            self._named if named is None else named,
            self._columns if columns == "same" else columns,
            self._on_error,
        )

    @property
    def plan(self) -> Plan:
        """The logical plan (frozen dataclasses) this collection runs."""
        return self._plan

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
        if self._columns is not None:
            for col in inputs:
                if col not in self._columns:
                    msg = f"{where}: no column {col!r}.{did_you_mean(col, self._columns)} Columns so far: {list(self._columns)}"
                    raise ColumnError(msg)

    def _columns_after(self, inputs: tuple[str, ...] | None, outputs: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if self._columns is None or inputs is None:
            return None if inputs is None and self._named else self._columns
        new = list(self._columns)
        new.extend(c for c in (outputs or ()) if c not in new)
        return tuple(new)

    def _apply(self, name: str, kwargs: dict[str, Any], key: Any, obj: Any = None) -> DataCollection:
        inputs, outputs = io_selectors(key, name) if key is not None else (None, None)
        if self._named and inputs is None and obj is None:
            cols = f" (columns: {', '.join(self._columns)})" if self._columns else ""
            msg = (
                f"{name}: rows are named{cols}; say which column it reads and writes, "
                f"e.g. dc.{name}['in_col', 'out_col'](...)"
            )
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

        ``fn`` may be a function, an :class:`~embedflow.Operator` instance or an Operator
        class (instantiated without parameters). Execution options ``workers=`` (threads), ``batch_size=`` and ``device=``
        (for batchable operators) are accepted.

        >>> import embedflow as ef
        >>> ef.dc["text"](["ab"]).map["text", "n"](len).to_list()
        [{'text': 'ab', 'n': 2}]
        """
        if not (callable(fn) or isinstance(fn, Operator)):
            msg = f"map() needs a function or an Operator, got {fn!r}"
            raise TypeError(msg)
        unknown = set(options) - set(EXECUTION_OPTIONS)
        if unknown:
            msg = (
                f"map(): unexpected keyword {sorted(unknown)[0]!r}; map takes fn and the options "
                f"{', '.join(EXECUTION_OPTIONS)} (bind other arguments with functools.partial)"
            )
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
        waits for the whole stream, then emits each row with its point.

        ``method`` is ``pca`` (numpy only), ``tsne`` (scikit-learn) or ``umap`` (umap-learn).

        >>> import embedflow as ef, numpy as np
        >>> pts = ef.dc([np.array([0.0, 0, 0]), np.array([1.0, 1, 0]), np.array([2.0, 2, 1])]).project(dim=2).to_numpy()
        >>> pts.shape
        (3, 2)
        """
        from .projection import METHODS, Projector

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

    def plot(self, path: str | os.PathLike[str], column: str | None = None, label: str | None = None, annotate: str | None = None, title: str | None = None) -> Any:
        """Run the plan and save a PNG scatter of its 2-D or 3-D points (needs matplotlib:
        ``pip install 'embedflow[viz]'``), coloured by the ``label`` column and annotated with
        the ``annotate`` column. Returns the path.

        >>> import embedflow as ef, numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "pts.png")
        >>> ef.dc["xy", "name"]([(np.array([0.0, 1.0]), "a"), (np.array([1.0, 0.0]), "b")]).plot(p, label="name").endswith("pts.png")
        True
        """
        from .io.sinks import vector_column
        from .projection import plot

        rows = self.to_list()
        if self._named:
            column = column or vector_column(True, rows[0] if rows else None, None)
            points = [r[column] for r in rows]
        else:
            points = rows
        labels = [r[label] for r in rows] if label else None
        notes = [r[annotate] for r in rows] if annotate else None
        plot(points, path, labels, notes, title)
        return str(path)

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

    def safe(self, errors: Any = None) -> DataCollection:
        """From here on, an item that fails is skipped and recorded instead of raising.

        ``errors`` receives one record per failure (row, step, error_type, message, item): a
        list to append to, a callable, or a file path for JSON lines. Each failure is also
        logged, and the run ends with a warning that counts them.

        >>> import embedflow as ef
        >>> import warnings; warnings.simplefilter("ignore")
        >>> ef.dc(["1", "x", "3"]).safe().map(int).to_list()
        [1, 3]
        """
        FailureLog(errors)  # validate the target now
        new = self._with(plan=replace(self._plan, errors=errors) if errors is not None else self._plan)
        new._on_error = "skip"
        return new

    def set_device(self, device: str) -> DataCollection:
        """The device for model steps that do not name one: auto, cpu, cuda, cuda:N or mps.

        >>> import embedflow as ef
        >>> ef.dc([1]).set_device("cpu").plan.device
        'cpu'
        """
        check_device(device)
        return self._with(plan=replace(self._plan, device=device))

    def set_engine(self, engine: str) -> DataCollection:
        """Choose the engine that runs the plan: ``local`` (default) or ``ray``.

        >>> import embedflow as ef
        >>> ef.dc([1]).set_engine("local").plan.engine
        'local'
        """
        if engine not in ENGINES:
            msg = f"set_engine({engine!r}): not an engine: use one of {', '.join(map(repr, ENGINES))}"
            raise PlanError(msg)
        get_engine(engine)  # fail now if it cannot run here
        return self._with(plan=replace(self._plan, engine=engine))

    # ---- looking at the plan ---------------------------------------------------------------
    def explain(self, analyze: bool = False) -> str:
        """The plan as text; nothing runs.

        With ``analyze=True`` the plan does run (its output is discarded) and the text adds,
        per stage, the items in and out, the time busy, the throughput and how long the stage
        waited for input or for its consumer — the busiest stage is the bottleneck.

        >>> import embedflow as ef
        >>> print(ef.dc([1]).map(abs).explain().splitlines()[-1])
          1 map    abs
        >>> "busiest stage" in ef.dc(range(100)).map(abs).explain(analyze=True)
        True
        """
        if not analyze:
            return self._plan.explain()
        stats = RunStats()
        for _rows in self._chunks(stats=stats, progress=False):
            pass
        return self._plan.explain().replace("(nothing has run; ", "(analyzed run; ") + "\n" + stats.report()

    def set_progress(self, show: bool | None) -> DataCollection:
        """Show a progress bar while a sink runs: ``True``, ``False``, or ``None`` (default:
        only when stderr is a terminal and the run takes more than a second).

        >>> import embedflow as ef
        >>> ef.dc([1]).set_progress(False).plan.progress
        False
        """
        return self._with(plan=replace(self._plan, progress=show))

    def to_yaml(self, path: str | os.PathLike[str] | None = None, *, name: str = "pipeline", sink: dict[str, Any] | None = None) -> str:
        """The chain as a YAML pipeline (written to ``path`` when given); ``embedflow run`` or
        ``ef.load_pipeline`` build the same plan from it.

        >>> import embedflow as ef
        >>> print(ef.read_text["text"]("t.txt").normalize["text"]().to_yaml())  # doctest: +NORMALIZE_WHITESPACE
        name: pipeline
        source:
          read_text: t.txt
          column: text
        steps:
        - op: normalize
          in: text
        """
        from .pipeline import collection_to_yaml

        text = collection_to_yaml(self, name=name, sink=sink)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    def show(self, n: int = 10) -> None:
        """Run the plan for its first ``n`` rows and print them as a table (vectors previewed).

        In a notebook, the collection itself renders as an HTML table of its first rows with
        image thumbnails (``_repr_html_``).

        >>> import embedflow as ef
        >>> ef.dc["text"](["hello"]).show()
        text
        -----
        hello
        """
        from .display import text_table

        print(text_table(self.head(n).set_progress(False).to_list()))

    def _repr_html_(self, n: int = 10) -> str:
        """Notebook view: the plan, and the first ``n`` rows with thumbnails and vector previews."""
        import html as _html

        from .display import html_table

        rows = self.head(n).set_progress(False).to_list()
        return f"<pre>{_html.escape(self.explain())}</pre>\n" + html_table(rows)

    def to_milvus(
        self,
        uri: str | os.PathLike[str],
        collection: str,
        vector: str = "vec",
        fields: list[str] | None = None,
        key: str | None = None,
        metric: str = "COSINE",
    ) -> int:
        """Run the plan and upsert every row into a Milvus collection; returns the rows written.

        ``uri`` is a Milvus Lite file (embedded) or ``http://host:19530``. The primary key is
        the ``key`` column (default: the path column of a glob source, else the source row
        number), so writing again replaces rows instead of duplicating them. ``fields`` are
        the scalar columns stored beside the vector (default: all scalar columns).

        >>> import embedflow as ef, tempfile, os
        >>> ef.dc["vec"]([[1.0, 0.0]]).to_milvus(os.path.join(tempfile.mkdtemp(), "v.db"), "c")
        1
        """
        from .io.milvus import MilvusWriter

        if not self._named:
            msg = "to_milvus() needs named rows: name the columns, e.g. ef.dc['text'](...)... ['text', 'vec']"
            raise ColumnError(msg)
        spec = self._plan.source.spec or {}
        key = key or (spec.get("column") if "glob" in spec else None)
        writer = MilvusWriter(str(uri), collection, vector, fields, metric)
        try:
            for numbers, rows in self._keyed_chunks():
                for number, row in zip(numbers, rows):
                    writer.add(str(row[key]) if key else str(number), row)
        finally:
            writer.close()
        return writer.written

    def __repr__(self) -> str:
        return f"<DataCollection: {len(self._plan.steps)} step(s), lazy>\n{self.explain()}"

    def __bool__(self) -> bool:
        msg = "the truth value of a DataCollection is ambiguous (it is lazy); use .to_list() or .head(1).to_list()"
        raise TypeError(msg)

    # ---- sinks -------------------------------------------------------------------------
    def _keyed_chunks(self, stats: RunStats | None = None, progress: bool | None = None) -> Iterator[tuple[Any, list[Any]]]:
        """Run the plan and yield ``(source row numbers, rows)``; failures are recorded."""
        engine = get_engine(self._plan.engine)
        failures = FailureLog(self._plan.errors)
        bar = progress_bar(self._plan, self._plan.progress if progress is None else progress)
        run = engine.execute(self._plan, failures, stats, progress=bar.update)
        try:
            for keys, rows in run:
                yield keys, rows
        finally:
            run.close()
            bar.close()
            failures.close()

    def _chunks(self, stats: RunStats | None = None, progress: bool | None = None) -> Iterator[list[Any]]:
        """Run the plan and yield chunks of output rows."""
        for _keys, rows in self._keyed_chunks(stats, progress):
            yield rows

    def __iter__(self) -> Iterator[Any]:
        """Run the plan and yield rows one by one (dicts in named mode)."""
        for rows in self._chunks():
            yield from rows

    def to_list(self) -> list[Any]:
        """Run the plan and return every row in a list.

        >>> import embedflow as ef
        >>> ef.dc("abc").to_list()
        ['a', 'b', 'c']
        """
        out: list[Any] = []
        for rows in self._chunks():
            out.extend(rows)
        return out

    def to_numpy(self, column: str | None = None) -> Any:
        """Run the plan and stack the rows (or one column) into a numpy array.

        In named mode ``column`` picks the column; it may be left out when exactly one column
        holds arrays.

        >>> import embedflow as ef, numpy as np
        >>> ef.dc["v"]([np.ones(3)]).to_numpy().shape
        (1, 3)
        """
        from .io.sinks import to_numpy

        return to_numpy(self._chunks(), self._named, column)

    def to_arrow(self) -> Any:
        """Run the plan and return a ``pyarrow.Table`` (vectors as fixed-size lists).

        Unnamed rows become one column called ``value``.

        >>> import embedflow as ef
        >>> ef.dc["n"]([1, 2]).to_arrow().num_rows
        2
        """
        import pyarrow as pa

        from .io.arrow import rows_to_table

        tables = [rows_to_table(rows, self._named) for rows in self._chunks()]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="permissive")

    def to_parquet(self, path: str | os.PathLike[str]) -> Any:
        """Run the plan and write the rows to a Parquet file, streaming in row groups.

        The file appears only when complete (written under a temporary name, then renamed).
        Returns the path.

        >>> import embedflow as ef, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "out.parquet")
        >>> ef.dc["n"]([1, 2]).to_parquet(p).name
        'out.parquet'
        """
        from .io.sinks import to_parquet

        return to_parquet(self._chunks(), self._named, path)

    def to_pandas(self) -> Any:
        """Run the plan and return a ``pandas.DataFrame`` (needs pandas installed).

        >>> import embedflow as ef
        >>> ef.dc["n"]([1, 2]).to_pandas().shape  # doctest: +SKIP
        (2, 1)
        """
        try:
            import pandas  # noqa: F401
        except ImportError as exc:
            msg = "to_pandas() needs pandas, which is not installed: pip install pandas (or use to_arrow())"
            raise ImportError(msg) from exc
        return self.to_arrow().to_pandas()
