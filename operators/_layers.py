"""Catching what one layer of a network computes: forward hooks, never a copy of the model.

Shared by ``embedding.torch`` and the ``layer=`` parameter of ``image_embedding.timm``.

>>> import torch
>>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> resolve_layer(m, -2)[0]
'1'
"""

from __future__ import annotations

import threading
from typing import Any

from embedflow.errors import did_you_mean

POOLS = ("avg", "max", "none")


class _Stop(Exception):
    """Raised by the hook once the layer's output is caught: the rest of the net is skipped."""


def resolve_layer(model: Any, layer: str | int) -> tuple[str, Any]:
    """The (name, module) for ``layer``: a name from ``named_modules()`` or a negative index
    over the model's top-level children (``-1`` the output layer, ``-2`` the one before)."""
    if isinstance(layer, int) and not isinstance(layer, bool):
        children = list(model.named_children())
        if layer >= 0 or -layer > len(children):
            msg = f"layer={layer}: use a negative index from -1 (the last of {len(children)} top-level layers) to -{len(children)}, or a layer name"
            raise ValueError(msg)
        return children[layer]
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = [n for n in modules if n]
        shown = ", ".join(n for n in names if n.count(".") == 0) or ", ".join(names[:20])
        msg = f"layer={layer!r} is not a module of this model.{did_you_mean(str(layer), names)} Top-level layers: {shown}"
        raise ValueError(msg)
    return layer, modules[layer]


def pool_output(output: Any, how: str) -> Any:
    """Spatial maps (N, C, H, W) or sequences (N, T, C) pooled to (N, C); others flattened."""
    import torch

    if isinstance(output, (tuple, list)):
        output = output[0]
    if how == "none":
        return output
    if output.ndim == 4:  # N, C, H, W
        return output.mean(dim=(2, 3)) if how == "avg" else output.amax(dim=(2, 3))
    if output.ndim == 3:  # N, T, C (tokens)
        return output.mean(dim=1) if how == "avg" else output.amax(dim=1)
    return torch.flatten(output, 1)


class LayerCatcher:
    """Runs ``model`` and returns what ``module`` output, stopping the forward pass there."""

    def __init__(self, model: Any, layer: str | int):
        self.model = model
        self.name, self.module = resolve_layer(model, layer)
        self.caught: Any = None
        self._owner: int | None = None

    def _hook(self, _module: Any, _inputs: Any, output: Any) -> None:
        # hooks are per module, not per caller: two steps may run the same model at once in
        # two threads (the logits and the penultimate layer), each must see only its own call
        if threading.get_ident() != self._owner:
            return
        self.caught = output
        raise _Stop

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The layer's output for this input; the hook lives only during this call, so the
        model behaves as before everywhere else."""
        self.caught = None
        self._owner = threading.get_ident()
        handle = self.module.register_forward_hook(self._hook)
        try:
            self.model(*args, **kwargs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if self.caught is None:
            msg = f"layer {self.name!r} was not run by the model's forward pass"
            raise RuntimeError(msg)
        return self.caught
