"""What in a forward would break or slow a CUDA graph, found by running it once on any device.

A CUDA graph records kernels, not Python: a forward can be replayed only if each call launches
the same kernels on the same buffers and nothing waits for the GPU on the way. Three kinds of
operations break that, and each also costs a device-wide wait per batch without graphs:

* **host data lifted to a tensor** (``torch.tensor(...)`` inside ``forward``: ``lift_fresh``):
  on CUDA a synchronous copy from pageable memory, illegal while recording;
* **a value read back** (``.item()``, ``bool(t)``, ``if t.all():`` — ``_local_scalar_dense``,
  ``is_nonzero``): the host waits for the GPU;
* **data-dependent shapes** (``nonzero``, ``masked_select``, ``unique``, a boolean index): the
  output size is known only after the GPU has computed it.

:class:`CaptureProbe` is a ``TorchDispatchMode`` that sees every aten call of a forward and
notes those; it runs on the CPU as well as on CUDA, so the tests hold every forward marked
``cuda_graphs`` to it without a GPU (tests/test_capture_safety.py), and
:class:`~embedflow.engines.cuda_graphs.GraphRunner` runs it once per shape before it records:
a forward it flags is never recorded (one warning names the operations).

>>> import torch
>>> capture_hazards(lambda x: x * 2 + 1, torch.ones(3))
[]
>>> capture_hazards(lambda x: x * torch.tensor([1.0, 2.0, 3.0]) if bool(x.all()) else x, torch.ones(3))
['is_nonzero', 'lift_fresh']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

READ_BACK = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal", "allclose"})
HOST_DATA = frozenset({"lift_fresh", "lift_fresh_copy"})
DATA_SHAPES = frozenset({"nonzero", "nonzero_static", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim"})


def _probe_class() -> type:
    """The dispatch mode (defined when torch is imported)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class CaptureProbe(TorchDispatchMode):
        """Notes each operation of :data:`READ_BACK`, :data:`HOST_DATA` and
        :data:`DATA_SHAPES` (and indexing by a boolean mask) run while it is active."""

        def __init__(self) -> None:
            super().__init__()
            self.found: list[str] = []

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = func.overloadpacket.__name__
            if name in READ_BACK or name in HOST_DATA or name in DATA_SHAPES:
                self.found.append(name)
            elif name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) if i is not None
            ):
                self.found.append(f"{name} by a boolean mask")
            return func(*args, **(kwargs or {}))

    return CaptureProbe


_PROBE: list[type] = []


def probed(forward: Callable[[Any], Any], batch: Any) -> tuple[Any, list[str]]:
    """``forward(batch)`` run once under the probe: its output and the operations that would
    break or slow a CUDA graph, sorted, without repeats (none: it can be recorded)."""
    if not _PROBE:
        _PROBE.append(_probe_class())
    probe = _PROBE[0]()
    with probe:
        output = forward(batch)
    return output, sorted(set(probe.found))


def capture_hazards(forward: Callable[[Any], Any], batch: Any) -> list[str]:
    """The hazards :func:`probed` finds in ``forward(batch)``, run under ``inference_mode``."""
    import torch

    with torch.inference_mode():
        return probed(forward, batch)[1]
