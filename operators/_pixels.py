"""Images kept as uint8 until the model's device: the CPU threads resize and crop (PIL), the
batch travels as uint8 NHWC — a quarter of the bytes of float pixels (39 MB instead of 154 MB
per 256 images at 224 px), pinned and copied in one piece — and the device scales and
normalises it. The values equal timm's eval transform (``Resize``, ``CenterCrop``,
``ToTensor``, ``Normalize``) exactly: the same float operations, done on the batch.

>>> import numpy as np, torch
>>> from torchvision import transforms as T
>>> full = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
>>> crop, mean, std = split_transform(full)
>>> from PIL import Image
>>> img = Image.fromarray(np.arange(300, dtype=np.uint8).reshape(10, 10, 3))
>>> batch = normalize_batch(torch.from_numpy(np.stack([np.asarray(crop(img))])), *pixel_scale(mean, std, "cpu"))
>>> bool(torch.equal(batch[0], full(img)))
True
"""

from __future__ import annotations

from typing import Any

_PIL_STEPS = ("Resize", "CenterCrop", "ResizeKeepRatio")
_TO_TENSOR = ("ToTensor", "MaybeToTensor")


def split_transform(transform: Any) -> tuple[Any, tuple[float, ...], tuple[float, ...]] | None:
    """``(pil_part, mean, std)`` when ``transform`` is PIL resizing/cropping followed by
    ``ToTensor`` and ``Normalize`` (timm's eval transform); None for anything else."""
    steps = list(getattr(transform, "transforms", []))
    names = [type(s).__name__ for s in steps]
    if len(steps) < 3 or names[-1] != "Normalize" or names[-2] not in _TO_TENSOR or not all(n in _PIL_STEPS for n in names[:-2]):
        return None
    from torchvision import transforms as T

    normalize = steps[-1]
    mean, std = (tuple(float(v) for v in normalize.mean), tuple(float(v) for v in normalize.std))
    return T.Compose(steps[:-2]), mean, std


def pixel_scale(mean: tuple[float, ...], std: tuple[float, ...], device: str) -> tuple[Any, Any]:
    """``mean`` and ``std`` as ``(1, C, 1, 1)`` float tensors on ``device``, built once at setup:
    a tensor made from Python numbers inside ``forward`` is a synchronous host-to-device copy
    per batch, which a CUDA graph cannot record (tests/test_capture_safety.py)."""
    import torch

    return (
        torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
        torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1),
    )


def normalize_batch(batch: Any, mean: Any, std: Any) -> Any:
    """A uint8 NHWC batch as float NCHW (channels-last in memory), scaled to [0, 1] and
    normalised, on the batch's device; ``mean``/``std`` from :func:`pixel_scale` (on that device)."""
    pixels = batch.permute(0, 3, 1, 2).float().div_(255)
    return pixels.sub_(mean).div_(std)
