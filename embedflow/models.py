"""Where a model name's files come from, offline first (DESIGN.md §4).

Order: a local directory or file; an installed model package (entry-point group
``embedflow.models``: name -> a function returning a local path); otherwise the name is
returned unchanged and the model library looks in its own cache, then the hub.

>>> from embedflow.models import resolve_model
>>> resolve_model("no-such/model-name")
'no-such/model-name'
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata
from pathlib import Path
from typing import Any

MODEL_ENTRY_POINT_GROUP = "embedflow.models"


def model_packages() -> dict[str, str]:
    """Model names served by installed packages -> the entry point that resolves each."""
    return {ep.name: ep.value for ep in metadata.entry_points(group=MODEL_ENTRY_POINT_GROUP)}


def resolve_model(name: str) -> str:
    """A local path for ``name`` when one is available offline, else ``name`` itself."""
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return str(Path(expanded).resolve())
    for ep in metadata.entry_points(group=MODEL_ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return str(ep.load()())
            except ModuleNotFoundError:  # the model package itself is not installed
                continue
    return name


def cache_dir() -> Path:
    """Where embedflow keeps converted model files: ``$EMBEDFLOW_CACHE`` or ``~/.cache/embedflow``."""
    root = os.environ.get("EMBEDFLOW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "embedflow")
    return Path(root)


def load_factory(spec: str) -> Any:
    """``"package.module:factory"`` -> the module object that ``factory()`` returns (an
    installed, importable module: a pipeline file never carries code)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        msg = f"model={spec!r}: write an importable factory as 'package.module:function'"
        raise ValueError(msg)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        msg = f"model={spec!r}: cannot import {attr!r} from {module_name!r} ({exc})"
        raise ValueError(msg) from exc
    return obj() if callable(obj) and not hasattr(obj, "forward") else obj
