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


# Modules whose factories a model spec ("package.module:factory") may import and call. A
# pipeline file is data: it names models, and only a module the user allowed — on the command
# line (--allow-import) or in Python (allow_import) — can be imported through it.
_allowed: set[str] = set()


def allow_import(*modules: str) -> None:
    """Trust these modules (and their submodules) to provide model factories that model specs
    such as ``embedding.torch(model="my_models.nets:small_cnn")`` may import and call.

    >>> allow_import("my_models")
    >>> check_factory("my_models.nets:small_cnn")
    ('my_models.nets', 'small_cnn')
    """
    for module in modules:
        if not module or not all(part.isidentifier() for part in module.split(".")):
            msg = f"allow_import({module!r}): give a module name such as 'my_models' or 'my_models.nets'"
            raise ValueError(msg)
        _allowed.add(module)


def allowed_imports() -> list[str]:
    """The modules allowed so far (:func:`allow_import`)."""
    return sorted(_allowed)


def check_factory(spec: str) -> tuple[str, str]:
    """``(module, attribute)`` of a ``"package.module:factory"`` spec whose module is allowed;
    otherwise an error that says how to allow it. Imports nothing.

    >>> check_factory("os:abort")
    Traceback (most recent call last):
    ...
    ValueError: model='os:abort' would import and run code from module 'os', which is not allowed: a pipeline file names models but never brings code. If you trust that module, allow it with --allow-import os (embedflow run/validate/explain) or ef.allow_import('os') in Python; or pass the model object itself in Python.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or not all(p.isidentifier() for p in [*module_name.split("."), *attr.split(".")]):
        msg = f"model={spec!r}: write an importable factory as 'package.module:function'"
        raise ValueError(msg)
    parts = module_name.split(".")
    if not any(".".join(parts[:i]) in _allowed for i in range(1, len(parts) + 1)):
        top = parts[0]
        msg = (
            f"model={spec!r} would import and run code from module {module_name!r}, which is not allowed: a pipeline file "
            f"names models but never brings code. If you trust that module, allow it with --allow-import {top} "
            f"(embedflow run/validate/explain) or ef.allow_import({top!r}) in Python; or pass the model object itself in Python."
        )
        raise ValueError(msg)
    return module_name, attr


def load_factory(spec: str) -> Any:
    """``"package.module:factory"`` -> what ``factory()`` returns (the module must be allowed:
    :func:`allow_import`); an object that is not callable, or is a module (``forward``), is
    returned as it is."""
    module_name, attr = check_factory(spec)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        msg = f"model={spec!r}: cannot import {attr!r} from {module_name!r} ({exc})"
        raise ValueError(msg) from exc
    return obj() if callable(obj) and not hasattr(obj, "forward") else obj
