"""Operator replicas: a step's operator built and set up on each device it runs on.

A plan holds no run state, so the engine keeps what it loaded here, keyed by the plan's step
node and held only as long as that node lives: running the same collection again reuses its
models, and a collection that is gone takes its models with it. A second replica of an
operator instance given to ``.map`` is a deep copy: replicas never share one model.

>>> import embedflow as ef
>>> step = ef.dc([1]).normalize().plan.steps[0]
>>> [device for device, _op in ready(step, ["cpu"])]
['cpu']
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence

from ..hooks import TakesPlacement
from ..operator import Operator
from ..plan import Apply, instantiate
from .devices import placement

_cache: weakref.WeakKeyDictionary[Apply, dict[str, Operator]] = weakref.WeakKeyDictionary()
_lock = threading.RLock()


def _needs_setup(op: Operator) -> bool:
    return type(op).setup is not Operator.setup


def place(op: Operator, device: str) -> None:
    """Hand ``op`` the engine's device-dependent choices for ``device`` (if it takes them):
    before its ``setup`` or ``setup_preprocess``, in every process that sets one up."""
    if isinstance(op, TakesPlacement):
        op.place(placement(device))


def set_up(op: Operator, device: str) -> Operator:
    """``op`` placed and set up on ``device``."""
    place(op, device)
    if _needs_setup(op):
        op.setup(device)
    return op


def ready(step: Apply, devices: Sequence[str], before_setup: Callable[[str, Operator], object] | None = None) -> list[tuple[str, Operator]]:
    """The step's operator set up on each of ``devices``, built once per device and kept for
    later runs of the same step; ``before_setup(device, op)`` is called for each new one before
    its (slow) ``setup`` — the engine starts its preprocessing processes there, so they start
    while the weights load."""
    with _lock:
        built = _cache.setdefault(step, {})
        out = []
        for device in devices:
            op = built.get(device)
            if op is None:
                op = instantiate(step, copy_instance=bool(built))
                if before_setup is not None:
                    before_setup(device, op)
                built[device] = set_up(op, device)
            out.append((device, op))
        return out


def cached(step: Apply) -> dict[str, Operator]:
    """The replicas already built for ``step``, by device (for tests and ``explain``)."""
    return dict(_cache.get(step, {}))


def fresh(step: Apply, device: str) -> Operator:
    """A new replica that nothing else holds (a worker process's own)."""
    return set_up(instantiate(step), device)
