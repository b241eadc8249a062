"""What a DataCollection can turn into: the calls that run its plan, each one sink handed to
:func:`embedflow.engines.execute` — iteration, ``to_list``, ``to_numpy``, ``to_arrow``,
``to_parquet``, ``to_pandas``, ``to_milvus`` — and the ways to look at it (``explain``,
``show``, ``plot``, ``to_yaml``).

>>> import embedflow as ef
>>> ef.dc("abc").to_list()
['a', 'b', 'c']
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engines import RunStats, describe_physical, execute, stream
from ..engines.incremental import run_cached
from ..errors import ColumnError
from ..io.files import ParquetSink, plain_value
from ..io.milvus import MilvusSink
from ..io.sinks import ArrowSink, CollectSink, NumpySink, Sink, vector_column
from ..io.vector_index import VectorIndex
from ..serve import serve
from ..views.display import html_table, text_table
from ..views.projection import plot
from .yaml_writer import collection_to_yaml

if TYPE_CHECKING:
    from ..plan import Plan, RunSettings


class Outputs:
    """The running half of :class:`~embedflow.DataCollection` (mixed in)."""

    __slots__ = ()
    _plan: Plan
    _named: bool
    _settings: RunSettings

    def _run(self, sink: Sink, engine: str | None) -> Any:
        settings = self._settings.but(engine=engine)
        if settings.cache is not None:
            return run_cached(self._plan, settings, sink, named=self._named)
        return execute(self._plan, sink, settings, named=self._named)

    def __iter__(self) -> Iterator[Any]:
        """Run the plan and yield rows one by one (dicts in named mode)."""
        if self._settings.cache is not None:  # written whole from the store
            yield from self.to_list()
            return
        for _numbers, rows in stream(self._plan, self._settings):
            yield from rows

    def to_list(self, *, engine: str | None = None) -> list[Any]:
        """Run the plan and return every row in a list.

        Every call that runs the plan takes ``engine=``: the engine for this run only
        (``"local"`` or ``"ray"``; default: the one ``set_engine`` chose, else local).

        >>> import embedflow as ef
        >>> ef.dc(range(3)).map(str).to_list()
        ['0', '1', '2']
        >>> ef.dc(range(3)).map(str).to_list(engine="local")
        ['0', '1', '2']
        """
        return self._run(CollectSink(), engine)

    def to_numpy(self, column: str | None = None, *, engine: str | None = None) -> Any:
        """Run the plan and stack the rows (or one column) into a numpy array.

        In named mode ``column`` picks the column; it may be left out when exactly one column
        holds arrays.

        >>> import embedflow as ef, numpy as np
        >>> ef.dc["v"]([np.ones(3)]).to_numpy().shape
        (1, 3)
        """
        return self._run(NumpySink(column), engine)

    def to_arrow(self, *, engine: str | None = None) -> Any:
        """Run the plan and return a ``pyarrow.Table`` (vectors as fixed-size lists).

        Unnamed rows become one column called ``value``.

        >>> import embedflow as ef
        >>> ef.dc["n"]([1, 2]).to_arrow().num_rows
        2
        """
        return self._run(ArrowSink(), engine)

    def to_parquet(self, path: str | os.PathLike[str], *, engine: str | None = None) -> Path:
        """Run the plan and write the rows to a Parquet file, streaming in row groups.

        The file appears only when complete (written under a temporary name, then renamed).
        Returns the path.

        >>> import embedflow as ef, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "out.parquet")
        >>> ef.dc["n"]([1, 2]).to_parquet(p).name
        'out.parquet'
        """
        return self._run(ParquetSink(path), engine)

    def to_pandas(self, *, engine: str | None = None) -> Any:
        """Run the plan and return a ``pandas.DataFrame`` (needs pandas installed).

        >>> import embedflow as ef
        >>> ef.dc["n"]([1, 2]).to_pandas().shape
        (2, 1)
        """
        try:
            import pandas  # noqa: F401
        except ImportError as exc:
            msg = "to_pandas() needs pandas, which is not installed: pip install pandas (or use to_arrow())"
            raise ImportError(msg) from exc
        return self.to_arrow(engine=engine).to_pandas()

    def to_index(
        self, vector: str | None = None, fields: list[str] | None = None, metric: str = "cosine", *, engine: str | None = None
    ) -> VectorIndex:
        """Run the plan and keep the vectors in memory as an index for exact nearest-neighbour
        search (``index.search(queries, limit)``, or a ``nearest(index=...)`` step); ``fields``
        are the columns a hit returns (default: every other column). ``index.save(path)``
        writes it as Parquet; ``ef.load_index(path)`` reads it back.

        >>> import embedflow as ef, numpy as np
        >>> ef.dc["vec", "word"]([(np.array([1.0, 0.0]), "a"), (np.array([0.0, 1.0]), "b")]).to_index()
        VectorIndex(2 vectors of 2, metric='cosine', fields=['word'])
        """
        import numpy as np

        rows = self.to_list(engine=engine)
        if self._named:
            column = vector or "vec"
            if rows and column not in rows[0]:
                msg = f"to_index: no column {column!r} in the rows (columns: {list(rows[0])}); name the vector column with vector="
                raise ColumnError(msg)
            keep = fields if fields is not None else [c for c in (rows[0] if rows else ()) if c != column]
            return VectorIndex(
                np.stack([np.asarray(r[column], dtype=np.float32) for r in rows]), [{c: plain_value(r[c]) for c in keep} for r in rows], metric
            )
        return VectorIndex(np.stack([np.asarray(r, dtype=np.float32) for r in rows]), None, metric)

    def to_milvus(
        self,
        uri: str | os.PathLike[str],
        collection: str,
        vector: str = "vec",
        fields: list[str] | None = None,
        key: str | None = None,
        metric: str = "COSINE",
        *,
        engine: str | None = None,
    ) -> int:
        """Run the plan and upsert every row into a Milvus collection; returns the rows written.

        ``uri`` is a Milvus Lite file (embedded) or ``http://host:19530``. The primary key is
        the ``key`` column (default: the path column of a glob source, else the source row
        number), so writing again replaces rows instead of duplicating them. ``fields`` are the
        scalar columns stored beside the vector (default: all scalar columns).

        >>> import embedflow as ef, tempfile, os
        >>> ef.dc["vec"]([[1.0, 0.0]]).to_milvus(os.path.join(tempfile.mkdtemp(), "v.db"), "c")
        1
        """
        if not self._named:
            msg = "to_milvus() needs named rows: name the columns, e.g. ef.dc['text'](...)... ['text', 'vec']"
            raise ColumnError(msg)
        return self._run(MilvusSink(uri, collection, vector, fields, metric, key), engine)

    def serve(self, **options: Any) -> None:
        """Serve this chain over HTTP until SIGTERM or Ctrl-C: each request's rows replace the
        source, rows from concurrent requests share model batches (``POST /run``, and
        ``POST /v1/embeddings`` when the chain maps one text to one vector). Options: ``host``,
        ``port``, ``device``, ``max_batch_size``, ``max_wait_ms``, ``max_queue``, ``limits``,
        ``files_root``, ``name``; needs ``pip install 'embedflow[serve]'``.

        >>> import embedflow as ef
        >>> callable(ef.dc["text"]([]).map["text", "n"](len).serve)
        True
        """
        serve(self, **options)

    # ---- looking at it ---------------------------------------------------------------------
    def explain(self, analyze: bool = False) -> str:
        """The plan as text; nothing runs.

        With ``analyze=True`` the plan does run (its output is discarded) and the text adds,
        per stage, the items in and out, the time busy, the throughput and how long the stage
        waited for input or for its consumer — the busiest stage is the bottleneck.

        Under the logical plan (the steps as written) comes the physical plan: the stages the
        engine runs, every execution option resolved for this machine, and why where embedflow
        chose it (``batch_size=256 (auto: cuda)``).

        >>> import embedflow as ef
        >>> print(ef.dc([1]).map(abs).explain())
        DataCollection plan (nothing has run; device=auto)
          source  dc(list of 1)
          1 map    abs
        physical plan (local engine)
          cheap   map  (1 thread, with the source)
        >>> "busiest stage" in ef.dc(range(100)).map(abs).explain(analyze=True)
        True
        """
        text = "\n".join([self._plan.explain(), *describe_physical(self._plan, self._settings.engine)])
        if not analyze:
            return text
        stats = RunStats()
        for _chunk in stream(self._plan, self._settings, stats=stats, progress=False):
            pass
        return text.replace("(nothing has run; ", "(analyzed run; ") + "\n" + stats.report()

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
        print(text_table(self.head(n).set_progress(False).to_list()))  # type: ignore[attr-defined]

    def _repr_html_(self, n: int = 10) -> str:
        """Notebook view: the plan, and the first ``n`` rows with thumbnails and vector previews."""
        rows = self.head(n).set_progress(False).to_list()  # type: ignore[attr-defined]
        return f"<pre>{html.escape(self.explain())}</pre>\n" + html_table(rows)

    def plot(
        self, path: str | os.PathLike[str], column: str | None = None, label: str | None = None, annotate: str | None = None, title: str | None = None
    ) -> Any:
        """Run the plan and save a PNG scatter of its 2-D or 3-D points (needs matplotlib:
        ``pip install 'embedflow[viz]'``), coloured by the ``label`` column and annotated with
        the ``annotate`` column. Returns the path.

        >>> import embedflow as ef, numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "pts.png")
        >>> ef.dc["xy", "name"]([(np.array([0.0, 1.0]), "a"), (np.array([1.0, 0.0]), "b")]).plot(p, label="name").endswith("pts.png")
        True
        """
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
        text = collection_to_yaml(self._plan, name=name, sink=sink)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text
