"""Device names and moving batches between devices. torch is imported only when needed.

>>> from embedflow.devices import resolve_device
>>> resolve_device("cpu")
'cpu'
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from .errors import PlanError


def resolve_device(requested: str | None) -> str:
    """Turn ``auto`` into the best device present (cuda, then mps, then cpu) and check others."""
    requested = requested or "auto"
    if requested == "cpu":
        return "cpu"
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            msg = f"device={requested!r} but no CUDA GPU is visible to torch; use device='cpu' or 'auto'"
            raise PlanError(msg)
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            msg = f"device={requested!r} but only {torch.cuda.device_count()} GPU(s) are visible; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            raise PlanError(msg)
        return f"cuda:{index}"
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            msg = "device='mps' but torch reports no Apple GPU; use device='cpu' or 'auto'"
            raise PlanError(msg)
        return "mps"
    msg = f"device={requested!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    raise PlanError(msg)


def _is_tensor(obj: Any) -> bool:
    return type(obj).__name__ in ("Tensor", "Parameter") and hasattr(obj, "to")


def move(obj: Any, device: str, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``obj`` (dicts, lists, tuples, nested) to ``device``."""
    if _is_tensor(obj):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        moved = {k: move(v, device, non_blocking) for k, v in obj.items()}
        try:
            return type(obj)(moved)
        except TypeError:
            return moved
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move(v, device, non_blocking) for v in obj)
    return obj
