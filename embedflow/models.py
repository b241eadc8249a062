"""Where a model name's files come from, offline first (DESIGN.md §4).

Order: a local directory or file; an installed model package (entry-point group
``embedflow.models``: name -> a function returning a local path); otherwise the name is
returned unchanged and the model library looks in its own cache, then the hub.

>>> from embedflow.models import resolve_model
>>> resolve_model("no-such/model-name")
'no-such/model-name'
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

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
