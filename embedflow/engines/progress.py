"""The progress bar of a run: tqdm on stderr, only on a terminal unless asked.

>>> import embedflow as ef
>>> bar = progress_bar(ef.dc([1, 2]).plan, False)
>>> bar.update(2); bar.close()
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..plan import Batch, Filter, FlatMap, Head, Plan


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _total(plan: Plan) -> int | None:
    """The number of output rows when it is known before running."""
    if any(isinstance(s, (Filter, FlatMap, Batch, Head)) for s in plan.steps):
        return None
    return plan.source.rows_to_read()


def progress_bar(plan: Plan, show: bool | None) -> Any:
    """A tqdm bar counting output rows, or a silent stand-in.

    ``show=None`` shows it only when stderr is a terminal, ``EMBEDFLOW_PROGRESS`` is not ``0``,
    and the run lasts more than a second.
    """
    if show is None:
        show = sys.stderr.isatty() and os.environ.get("EMBEDFLOW_PROGRESS", "1") != "0"
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=_total(plan), desc="embedflow", unit=" rows", delay=1.0, dynamic_ncols=True, leave=False)
