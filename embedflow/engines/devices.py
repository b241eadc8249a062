"""Device names and moving batches between devices. torch is imported only when needed.

>>> from embedflow.engines.devices import resolve_device
>>> resolve_device("cpu")
'cpu'
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import EmbedflowError, PlanError
from ..hooks import Placement


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


def resolve_devices(requested: str | None) -> list[str]:
    """The devices a model step runs on: one replica each.

    ``cuda`` (and ``auto`` on a machine with GPUs) means every visible GPU; ``cuda:N`` one.

    >>> resolve_devices("cpu")
    ['cpu']
    """
    requested = requested or "auto"
    if requested in ("auto", "cuda"):
        first = resolve_device(requested)
        if first.startswith("cuda"):
            import torch

            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return [first]
    return [resolve_device(requested)]


def autocast(device: str, dtype: str | None) -> Any:
    """A factory of the autocast context for ``device``, built and checked once (at setup):
    ``auto`` is bf16 on a CUDA device that has it (fp16 overflows in bf16-trained and T5-family
    models), fp16 on older CUDA devices and fp32 elsewhere; ``fp16``/``bf16`` ask for that
    precision — bf16 on a CUDA device without it is an error now, not a failure per batch —;
    ``fp32`` turns autocast off.

    >>> autocast("cpu", None)().__class__.__name__
    'nullcontext'
    """
    import contextlib

    dtype = precision(device, dtype)
    if dtype == "fp32":
        return contextlib.nullcontext
    import torch

    if dtype == "bf16" and device.startswith("cuda") and not bf16_supported(device):
        msg = f"dtype='bf16' but {device} has no bfloat16 support; use dtype='fp16' or 'fp32'"
        raise EmbedflowError(msg)
    torch_dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
    device_type = device.split(":")[0]
    factory = functools.partial(torch.autocast, device_type=device_type, dtype=torch_dtype)
    with factory():  # fails here, once, if this device cannot autocast to that type
        pass
    return factory


def precision(device: str, dtype: str | None) -> str:
    """``fp32``, ``fp16`` or ``bf16``: what ``dtype`` (``auto`` or None: bf16 on a CUDA device
    that has it, else fp16 on CUDA, fp32 elsewhere) means on ``device``.

    >>> precision("cpu", None), precision("cpu", "bf16")
    ('fp32', 'bf16')
    """
    dtype = dtype or "auto"
    if dtype == "auto":
        return ("bf16" if bf16_supported(device) else "fp16") if device.startswith("cuda") else "fp32"
    return dtype


def bf16_supported(device: str) -> bool:
    """Whether the CUDA ``device`` computes in bfloat16 (Ampere and later)."""
    import torch

    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


def bind_device(device: str) -> None:
    """Make ``device`` the current CUDA device of the calling thread (a forward thread of
    ``cuda:1`` must not launch custom kernels, ``.cuda()`` calls or streams on device 0)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # input shapes repeat (fixed image sizes): pick the fastest kernels once


_DEVICE_WIDE = (
    "device-side assert",
    "expected all tensors to be on the same device",
    "cuda error",
    "cublas_status",
    "cudnn_status",
    "illegal memory access",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """The device ran out of memory for this batch (``torch.OutOfMemoryError``): a smaller
    batch may fit. The one test of it: the batch retry, the CUDA graph recorder and
    :func:`is_device_error` all ask here.

    >>> import torch
    >>> is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory")), is_out_of_memory(RuntimeError("out of memory"))
    (True, False)
    """
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def is_device_error(exc: BaseException) -> bool:
    """An error of the device or the model's placement, not of one input: a device-side
    assert, tensors on different devices, an accelerator failure. Retrying such a batch item
    by item would only fail every item (and, under ``.safe()``, skip them all)."""
    import torch

    if isinstance(exc, getattr(torch, "AcceleratorError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and not is_out_of_memory(exc) and any(s in text for s in _DEVICE_WIDE)


_LEAVES = frozenset({str, bytes, int, float, bool, type(None)})


def map_tensors(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside it (tensor subclasses included),
    through dicts, lists, tuples, namedtuples and dataclasses, nested.

    >>> map_tensors({"a": [1, (2, 3)]}, lambda t: t)
    {'a': [1, (2, 3)]}
    """
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return obj if torch is None else _map(obj, fn, torch.Tensor)


def _map(obj: Any, fn: Callable[[Any], Any], tensor: type) -> Any:
    kind = type(obj)
    if kind in _LEAVES:  # the common case first: a batch of plain values costs little
        return obj
    if isinstance(obj, tensor):
        return fn(obj)
    if kind is list:
        return [_map(v, fn, tensor) for v in obj]
    if kind is dict:
        return {k: _map(v, fn, tensor) for k, v in obj.items()}
    if isinstance(obj, Mapping):
        mapped = {k: _map(v, fn, tensor) for k, v in obj.items()}
        try:
            return kind(mapped)
        except TypeError:
            return mapped
    if isinstance(obj, tuple):
        items = [_map(v, fn, tensor) for v in obj]
        return kind(*items) if hasattr(obj, "_fields") else kind(items)  # namedtuple or tuple
    if isinstance(obj, list):
        return kind(_map(v, fn, tensor) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _map(getattr(obj, f.name), fn, tensor) for f in dataclasses.fields(obj) if f.init})
    return obj


def pin(obj: Any) -> Any:
    """Page-lock every CPU tensor in ``obj`` so the copy to the GPU can overlap compute."""
    return map_tensors(obj, lambda t: t.pin_memory() if t.device.type == "cpu" else t)


def move(obj: Any, device: str, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``obj`` (dicts, lists, tuples, dataclasses, nested) to ``device``."""
    return map_tensors(obj, lambda t: t.to(device, non_blocking=non_blocking))


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def placement(device: str) -> Placement:
    """The engine's device-dependent choices for a replica on ``device`` (see
    :class:`~embedflow.hooks.Placement`): its runtime may use the threads torch uses in this
    process (one in a preprocessing worker); on CUDA, batches come in fixed shapes.

    >>> placement("cpu").fixed_shapes, placement("cuda:1").fixed_shapes
    (False, True)
    """
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else 0
    return Placement(device, threads=threads, fixed_shapes=device.startswith("cuda"))


def default_workers(cpu_models: bool) -> int:
    """Threads for a preprocess pool when the step does not say ``workers=``.

    All the cores when the models run elsewhere (a GPU); when a model runs on the CPU, torch's
    intra-op threads already use the cores, so the pools get what is left, at least one
    thread — decode threads plus torch threads should not exceed the cores. Measured on 2
    cores (benchmarks/bench_images.py, resnet18): 2 decode threads beside torch's 2 gave
    33 images/s, 1 gave 36.5.
    """
    cores = cpu_count()
    if cpu_models:
        import torch

        return max(1, cores - torch.get_num_threads())
    return cores


class NonFiniteOutput(ValueError):
    """A model gave inf or NaN: an input it cannot handle, or fp16 overflow."""


def check_finite(output: Any, label: str) -> None:
    """Raise :class:`NonFiniteOutput` when a float tensor of ``output`` (on the CPU, after the
    copy back: nearly free) holds inf or NaN, instead of writing such vectors silently."""
    torch = sys.modules.get("torch")
    if torch is None:  # no tensor can exist
        return
    import numpy as np

    bad: list[bool] = []

    def look(t: Any) -> Any:
        if t.is_floating_point() and t.device.type == "cpu" and not t.requires_grad and t.dtype in (torch.float32, torch.float64):
            values = t.numpy()  # numpy: one thread, no torch thread pool to wake
            # an inf or NaN anywhere makes the sum inf or NaN: one pass, no temporary array
            # (the exact check only when a sum of finite values overflowed)
            with np.errstate(over="ignore", invalid="ignore"):
                finite = bool(np.isfinite(values.sum())) or bool(np.isfinite(values).all())
        else:
            finite = not t.is_floating_point() or bool(t.isfinite().all())
        if not finite:
            bad.append(True)
        return t

    map_tensors(output, look)
    if bad:
        msg = f"{label} gave inf/NaN values; under dtype='fp16' a model trained in bf16 (or a T5-family model) overflows: use dtype='bf16' or 'fp32'"
        raise NonFiniteOutput(msg)


def free_device_cache(device: str) -> None:
    """Give cached blocks back to a CUDA device after an out-of-memory error."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
