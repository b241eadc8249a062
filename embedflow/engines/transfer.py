"""Batches between host and device: the copy to the device on a stream beside the compute, a
batch staged on a stream of its own (``prepare_on_device``) handed to the compute with an event,
the copy back into pinned memory, fp32, and results that own their memory.

>>> import torch
>>> back_to_cpu(torch.ones(2, dtype=torch.bfloat16)).dtype  # fp32 before the copy back
torch.float32
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .devices import map_tensors, move


@dataclass
class Staged:
    """A batch on its device, through ``prepare_on_device``; on CUDA ``event`` marks it ready."""

    batch: Any
    event: Any = None


def staged_batch(replica: Any, staged: Staged) -> Any:
    """A staged batch for the compute stream: on CUDA the stream waits for its event (on the
    GPU, not the host) and its memory is marked in use by the compute."""
    if staged.event is None:
        return staged.batch
    import torch

    compute = torch.cuda.current_stream(replica.device)
    compute.wait_event(staged.event)
    return map_tensors(staged.batch, functools.partial(_used_by, compute))


def copy_stream(device: str) -> Any:
    """A CUDA stream for the batches' copies to ``device`` (None elsewhere)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.Stream(device)


def back_to_cpu(t: Any) -> Any:
    """A device tensor's copy to pinned CPU memory, started; fp16/bf16 made fp32 on the device
    first (free there, while on the CPU the conversion is torch's threaded work beside the
    pipeline's threads)."""
    import torch

    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.to("cpu", non_blocking=True)


def to_device(replica: Any, collated: Any) -> Any:
    """The batch on the replica's device; on CUDA copied on the replica's copy stream, so the
    copy overlaps the compute of the batch before it."""
    if replica.copy_stream is None:
        return move(collated, replica.device, non_blocking=replica.non_blocking)
    import torch

    with torch.cuda.stream(replica.copy_stream):
        moved = move(collated, replica.device, non_blocking=True)
    compute = torch.cuda.current_stream(replica.device)
    compute.wait_stream(replica.copy_stream)
    return map_tensors(moved, functools.partial(_used_by, compute))


def _used_by(stream: Any, t: Any) -> Any:
    """``t``, its memory not reused before the work queued on ``stream`` is done (a tensor made
    on another stream and read by this one)."""
    if t.device.type == "cuda":
        t.record_stream(stream)
    return t


def owned(output: Any) -> Any:
    """``output`` with each tensor in page-locked (pinned) memory copied to ordinary memory: a
    result kept downstream must not hold a pinned buffer (page-locked memory would grow with
    every vector kept, ~8 GB for a million resnet50 vectors) nor be a view into one.

    >>> import torch
    >>> t = torch.ones(2)
    >>> owned({"a": t})["a"] is t  # not pinned: as it is
    True
    """
    return map_tensors(output, lambda t: t.clone() if t.device.type == "cpu" and t.is_pinned() else t)
