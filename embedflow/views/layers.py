"""Which layers a network has, and what each outputs: the names ``layer=`` accepts.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
>>> [(name, shape) for name, _kind, shape in layer_table(net, torch.zeros(1, 3))]
[('0', (1, 4)), ('1', (1, 4))]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..models import load_factory


def layer_table(model: Any, sample: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, module type, output shape) of every module that runs on ``sample``, in order."""
    import torch

    seen: list[tuple[str, str, tuple[int, ...]]] = []
    handles = []

    def hook(name: str) -> Callable[[Any, Any, Any], None]:
        def record(module: Any, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if hasattr(out, "shape"):
                seen.append((name, type(module).__name__, tuple(out.shape)))

        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            model.eval()(sample)
    finally:
        for h in handles:
            h.remove()
    return seen


def model_and_sample(spec: str, input_size: tuple[int, ...] | None = None) -> tuple[Any, Any]:
    """A model from a timm name or a ``package.module:factory``, and a zero input for it."""
    import torch

    if ":" in spec:
        model = load_factory(spec)
        if input_size is None:
            msg = f"{spec}: give --input-size (e.g. 1,8,8) for a model that is not a timm architecture"
            raise ValueError(msg)
    else:
        import timm

        if not timm.is_model(spec):
            msg = f"{spec!r} is neither a timm model nor 'package.module:factory'"
            raise ValueError(msg)
        model = timm.create_model(spec, pretrained=False)
        config: dict[str, Any] = getattr(model, "pretrained_cfg", {})
        input_size = input_size or tuple(config.get("input_size", (3, 224, 224)))
    return model, torch.zeros(1, *input_size)
