"""Fault points for crash tests: with ``EMBEDFLOW_FAULT=<point>`` (or ``<point>:<n>``, the n-th
time) this process kills itself with SIGKILL when it reaches that point, as a power cut would.
The points are the instants where a resumable run's files change: a shard written but not yet
listed, half the output merged, the output renamed into place but the shards not yet removed,
the shards' folder renamed away but not yet deleted.

>>> fault("never-set")  # without the variable, nothing happens
"""

from __future__ import annotations

import os
import signal

POINTS = ("shard-written", "merge-half", "output-written", "cleanup-renamed")
_seen: dict[str, int] = {}


def fault(point: str) -> None:
    """Die here if ``EMBEDFLOW_FAULT`` names this point (and this is the n-th time)."""
    wanted = os.environ.get("EMBEDFLOW_FAULT")
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
