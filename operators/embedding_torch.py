"""``embedding.torch``: the output of any layer of any ``torch.nn.Module`` as the embedding.

>>> import embedflow as ef, torch
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
>>> ef.dc([[1.0, 2.0, 3.0]]).embedding.torch(model=net, layer=-2).to_list()[0].shape
(5,)
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from embedflow import Operator
from embedflow.models import check_factory, load_factory

from ._layers import POOLS, LayerCatcher, pool_output, resolve_layer


class TorchLayerEmbedding(Operator):
    """Run a torch model and keep one layer's output (caught with a forward hook).

    Parameters:
        model: an ``nn.Module``, or in YAML an importable ``"package.module:factory"``.
        layer: a module name from ``model.named_modules()`` (``"fc1"``, ``"layer4.1"``) or a
            negative index over its top-level layers: ``-1`` the output (e.g. the 10 values
            before a softmax), ``-2`` the layer before it (the penultimate embedding).
        pool: spatial maps (N, C, H, W) and token sequences are averaged (``"avg"``, default)
            or max-pooled (``"max"``) to one vector; ``"none"`` keeps the whole output.

    Input: an array or tensor (one example, without the batch dimension). Output: float32.
    The forward pass stops at the layer, so later layers cost nothing. A module you pass is
    copied for each device it runs on (moved and put in eval mode there); yours is left as it was.
    """

    batchable = True

    def __init__(self, model: Any, layer: str | int = -2, pool: str = "avg"):
        if pool not in POOLS:
            msg = f"embedding.torch: pool={pool!r} is not one of {', '.join(POOLS)}"
            raise ValueError(msg)
        if isinstance(model, str):
            check_factory(model)  # allowed or not, by name only: nothing is imported before setup
        elif hasattr(model, "named_modules"):
            resolve_layer(model, layer)  # a bad layer fails when the chain is built
        else:
            msg = f"embedding.torch: model must be a torch.nn.Module or 'package.module:factory', got {type(model).__name__}"
            raise ValueError(msg)
        self.model, self.layer, self.pool = model, layer, pool

    def setup(self, device: str) -> None:
        net = load_factory(self.model) if isinstance(self.model, str) else self.model
        if not hasattr(net, "named_modules"):
            msg = f"embedding.torch: {self.model!r} gave a {type(net).__name__}, not a torch.nn.Module"
            raise ValueError(msg)
        resolve_layer(net, self.layer)
        if net is self.model:  # the caller's module: each replica gets its own copy, and it stays as it was
            net = copy.deepcopy(net)
        self.net = net.to(device).eval()
        self.catch = LayerCatcher(self.net, self.layer)

    def preprocess(self, x: Any) -> Any:
        import torch

        if type(x).__name__ == "Tensor":
            return x.detach().to(torch.float32)
        return torch.as_tensor(np.asarray(x, dtype=np.float32))

    def forward(self, batch: Any) -> Any:
        return pool_output(self.catch(batch), self.pool)

    def postprocess(self, output: Any) -> list[np.ndarray]:
        return list(output.float().numpy())
