"""The ONNX Runtime backend of the model operators: a model is exported once, checked against
torch on a padded batch, cached on disk, and run with ONNX Runtime.

The cache key is the model's files (name, size, modification time), the export's options and
the library versions, so a changed model or a new torch exports again. Concurrent first uses
are safe: one process exports (a file lock), writes under a temporary name and renames; the
others wait and reuse the file.

>>> choose_backend("torch", "cpu", measured=True)
'torch'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from embedflow.models import cache_dir

BACKENDS = ("auto", "torch", "onnx")
INSTALL_HINT = "backend='onnx' needs ONNX Runtime, which is not installed: pip install 'embedflow[onnx]'"
OPSET = 17


def check_backend(op: str, backend: str) -> str:
    if backend not in BACKENDS:
        msg = f"{op}: backend={backend!r} is not one of {', '.join(map(repr, BACKENDS))}"
        raise ValueError(msg)
    return backend


def available() -> bool:
    """Whether ONNX Runtime (and onnx, for exporting) are installed."""
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def choose_backend(backend: str, device: str, measured: bool) -> str:
    """The backend a step runs: ``auto`` is ONNX Runtime on the CPU for a model family measured
    faster there (and only when it is installed), else torch; ``onnx`` needs it installed."""
    if backend == "auto":
        return "onnx" if device == "cpu" and measured and available() else "torch"
    if backend == "onnx":
        if not available():
            raise ImportError(INSTALL_HINT)
        if device != "cpu":
            msg = f"backend='onnx' runs on the CPU here (ONNX Runtime's CPU provider); device={device!r}: use backend='torch' on it"
            raise ValueError(msg)
    return backend


def files_of(folder: str | os.PathLike[str] | None) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of a model folder's files: what identifies the weights cheaply."""
    if folder is None or not Path(folder).exists():
        return []
    root = Path(folder)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [(str(p.relative_to(root) if root.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


def cache_key(**parts: Any) -> str:
    versions = {name: _version(name) for name in ("torch", "transformers", "timm", "onnx", "onnxruntime")}
    text = json.dumps({**parts, "versions": versions, "opset": OPSET}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def notice(message: str) -> None:
    """A line on stderr beside the progress bar (what a first run spends its time on)."""
    if os.environ.get("EMBEDFLOW_PROGRESS", "1") != "0":
        print(f"embedflow: {message}", file=sys.stderr, flush=True)


def exported(key: str, label: str, export: Callable[[Path], None]) -> Path:
    """The cached ONNX file for ``key``, made by ``export(path)`` the first time."""
    from filelock import FileLock

    folder = cache_dir() / "onnx" / key
    target = folder / "model.onnx"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if target.exists():  # another process exported it while this one waited
            return target
        notice(f"exporting {label} to ONNX, once (cached in {folder})")
        start = time.perf_counter()
        tmp = folder / f"model.{os.getpid()}.tmp.onnx"
        try:
            export(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        notice(f"exported {label} in {time.perf_counter() - start:.1f}s")
    return target


class Session:
    """An ONNX Runtime session on the CPU: intra-op threads as torch uses, all graph
    optimizations on."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, arrays: dict[str, Any]) -> list[Any]:
        return self.session.run(None, {name: arrays[name] for name in self.inputs})


def check_export(session: Session, arrays: dict[str, Any], expected: Any, label: str) -> None:
    """Refuse an export whose outputs differ from torch's on a padded batch (a traced export
    can freeze shapes and silently compute something else)."""
    import numpy as np

    got = session(arrays)[0]
    error = float(np.abs(got - expected).max())
    if error > 1e-3:
        msg = f"{label}: the ONNX export differs from torch by {error:.3g} on a padded batch; use backend='torch' for this model"
        raise RuntimeError(msg)
