"""Running a plan: lower it, pick its engine, and hand the rows to a sink — one routine for
``to_list``, ``to_parquet``, ``to_milvus``, the pipeline runner and everything else. The engine
named in the :class:`~embedflow.plan.RunSettings` is resolved here, when a sink runs, not when
the chain is built.

>>> import embedflow as ef
>>> from embedflow.io.sinks import CollectSink
>>> execute(ef.dc([3, 1]).map(str).plan, CollectSink())
['3', '1']
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ..errors import remember_user_site
from ..io.sinks import Sink, SinkContext
from ..plan import Plan, RunSettings, lower
from .base import get_engine
from .failures import FailureLog
from .progress import progress_bar
from .stats import RunStats
from .steps import Chunk

logger = logging.getLogger("embedflow")


def stream(
    plan: Plan,
    settings: RunSettings | None = None,
    *,
    ordered: bool = True,
    stats: RunStats | None = None,
    progress: bool | None = None,
    failures: FailureLog | None = None,
) -> Iterator[Chunk]:
    """Run ``plan`` on the engine ``settings`` name and yield chunks ``(source row numbers, rows)``.

    ``failures`` receives the rows skipped under ``.safe()`` (default: the settings' target,
    closed with a warning that counts them); ``progress`` overrides the settings' bar. Closing
    the iterator stops the run.
    """
    settings = settings or RunSettings()
    physical = lower(plan, ordered=ordered)
    engine = get_engine(settings.engine)
    log = failures if failures is not None else FailureLog(settings.errors, physical.key_column)
    bar = progress_bar(plan, settings.progress if progress is None else progress)
    run = engine.run(physical, log, stats, progress=bar.update)
    try:
        yield from run
    finally:
        run.close()
        bar.close()
        if failures is None:
            log.close()


def execute(
    plan: Plan,
    sink: Sink,
    settings: RunSettings | None = None,
    *,
    named: bool = False,
    stats: RunStats | None = None,
    progress: bool | None = None,
    failures: FailureLog | None = None,
) -> Any:
    """Run ``plan`` into ``sink`` and return what the sink returns when closed.

    Rows reach the sink in input order unless the sink accepts any order
    (``sink.ordered = False``); then each row is handed over as soon as it is finished. If the
    run fails or is interrupted, the sink is aborted (a file sink leaves nothing behind, a
    resumable one keeps what is finished) and the error propagates.
    """
    remember_user_site()  # where a warning from a worker thread points
    sink.open(SinkContext(named=named, key_column=plan.key_column, source=plan.source, expands=plan.expands))
    try:
        for numbers, rows in stream(plan, settings, ordered=sink.ordered, stats=stats, progress=progress, failures=failures):
            with naming(sink):
                sink.write(numbers, rows)
    except BaseException:
        try:
            sink.abort()
        except Exception:
            logger.exception("cleaning up the sink after a failed run failed too")
        raise
    with naming(sink):
        return sink.close()


@contextlib.contextmanager
def naming(sink: Sink) -> Iterator[None]:
    """An OSError from writing that names no file (a full disk: "No space left on device")
    names the sink's output instead, so the one-line error says where."""
    try:
        yield
    except OSError as exc:
        target = sink.target()
        if exc.filename is not None or not exc.strerror or target is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(target)) from exc
