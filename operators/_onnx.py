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

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from embedflow.models import cache_dir
from embedflow.operator import expected_items

BACKENDS = ("auto", "torch", "onnx")
INSTALL_HINT = "backend='onnx' needs ONNX Runtime, which is not installed: pip install 'embedflow[onnx]'"
OPSET = 18


def check_backend(op: str, backend: str) -> str:
    """``backend`` if it is valid and can run here (``onnx`` needs the onnx extra)."""
    if backend not in BACKENDS:
        msg = f"{op}: backend={backend!r} is not one of {', '.join(map(repr, BACKENDS))}"
        raise ValueError(msg)
    if backend == "onnx" and not available():
        raise ValueError(f"{op}: {INSTALL_HINT}")
    return backend


def available() -> bool:
    """Whether ONNX Runtime and the exporter's packages (onnx, onnxscript) are installed."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))
    except (ImportError, ValueError):  # a module set to None in sys.modules: not importable
        return False


def choose_backend(backend: str, device: str, measured: bool) -> str:
    """The backend a step runs: ``auto`` is ONNX Runtime on the CPU for a model family measured
    faster there (and only when it is installed), else torch; ``onnx`` needs it installed."""
    if backend == "auto":
        forced = os.environ.get("EMBEDFLOW_BACKEND", "auto")  # a process-wide choice for "auto"
        if forced in ("torch", "onnx"):
            return choose_backend(forced, device, measured)
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


# Rows below which ``auto`` stays on torch rather than export: an export takes 10-20 s on a
# 2-core CPU and ONNX Runtime saves ~2.4 ms a row over torch for MiniLM (125.6 vs 179.2
# sentences/s, benchmarks/RESULTS.md "Text"), so under 2,000 rows the export costs at least
# twice what it saves; from there on it is about even on the first run and a gain on every
# later one (the export is cached).
EXPORT_PAYS_OFF_ROWS = 2000


def export_declined(backend: str, key: str, label: str) -> bool:
    """Whether ``auto`` runs torch instead of exporting now: the export is not cached and the
    run reads fewer rows than would win it back (``expected_items``). It says so on stderr."""
    rows = expected_items()
    if backend != "auto" or rows is None or rows >= EXPORT_PAYS_OFF_ROWS:
        return False
    if (cache_dir() / "onnx" / key / "model.onnx").exists():
        return False
    notice(
        f"{label}: torch for these {rows} rows (exporting to ONNX costs 10-20 s once and pays off from about "
        f"{EXPORT_PAYS_OFF_ROWS} rows; backend='onnx' exports now)"
    )
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _intact(target: Path) -> bool:
    """Whether the cached file is the one that was exported and checked: its SHA-256 equals the
    one stored beside it when it was made (a file replaced or truncated since does not)."""
    stored = target.with_name(target.name + ".sha256")
    try:
        return stored.read_text().strip() == _sha256(target)
    except OSError:
        return False


def exported(key: str, label: str, export: Callable[[Path], None], verify: Callable[[Path], None], fallback: bool = False) -> Path | None:
    """The cached ONNX file for ``key``: made by ``export(path)`` and checked by
    ``verify(path)`` the first time, then renamed into the cache with its SHA-256 beside it.
    A cached file that no longer matches its checksum (replaced, truncated, or made before
    checksums) is exported again, with one notice. A cache that cannot be written fails the
    run, or with ``fallback`` (``backend='auto'``) answers None, with one notice: run torch."""
    from filelock import FileLock

    folder = cache_dir() / "onnx" / key
    target = folder / "model.onnx"
    if _intact(target):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / ".lock"))
        lock.acquire()
    except OSError as exc:
        why = f"the ONNX cache {folder} cannot be written ({exc.strerror or exc})"
        if fallback:
            notice(f"{label}: torch, since {why}; EMBEDFLOW_CACHE=<a writable folder> lets the export be cached there")
            return None
        msg = f"{label}: {why}. Fix: set EMBEDFLOW_CACHE to a writable folder, or use backend='torch'"
        raise OSError(msg) from exc
    try:
        if _intact(target):  # another process exported it while this one waited
            return target
        if target.exists():
            notice(
                f"{label}: the cached ONNX file {target} does not match its checksum (changed, truncated or made by an older embedflow); exporting it again"
            )
        _export_into(folder, target, label, export, verify)
    finally:
        lock.release()
    return target


def _export_into(folder: Path, target: Path, label: str, export: Callable[[Path], None], verify: Callable[[Path], None]) -> None:
    notice(f"exporting {label} to ONNX, once (cached in {folder})")
    start = time.perf_counter()
    tmp = folder / f"model.{os.getpid()}.tmp.onnx"
    stored = folder / f"model.onnx.sha256.{os.getpid()}.tmp"
    try:
        export(tmp)
        verify(tmp)
        stored.write_text(_sha256(tmp) + "\n")
        os.replace(tmp, target)
        os.replace(stored, target.with_name(target.name + ".sha256"))
    finally:
        tmp.unlink(missing_ok=True)
        stored.unlink(missing_ok=True)
    notice(f"exported {label} in {time.perf_counter() - start:.1f}s")


def export_module(module: Any, example: tuple[Any, ...], path: Path, names: list[str], dynamic: dict[str, dict[int, str]]) -> None:
    """``module`` to ONNX with torch's exporter (torch.export: shapes stay symbolic, so a padded
    batch of any size computes what torch computes); ``dynamic`` names each input's dynamic axes."""
    import torch

    dims: dict[str, Any] = {}
    shapes = tuple({axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in dynamic[name].items()} for name in names)
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), warnings.catch_warnings():  # the exporter prints its progress
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)  # about its own axis names
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=True,
            input_names=names,
            output_names=["output"],
            dynamic_shapes=shapes,
            opset_version=OPSET,
            external_data=False,
        )


def optimize_transformer(path: Path, model_type: str) -> bool:
    """Fuse a transformer's layer norms, GELUs and biases with ONNX Runtime's transformer
    optimizer, in place, for the model types it knows (``bert``, ``vit``, ``clip``, …); ``False``
    where it does not know the type. Level 1 only: the fusions are exact and portable."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    if model_type not in MODEL_TYPES:
        return False
    with contextlib.redirect_stdout(io.StringIO()):
        optimize_model(str(path), model_type=model_type, opt_level=1).save_model_to_file(str(path))
    return True


class Session:
    """An ONNX Runtime session on the CPU: intra-op threads as torch uses, all graph
    optimizations on."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, arrays: dict[str, Any]) -> list[Any]:
        return self.session.run(None, {name: arrays[name] for name in self.inputs})


def quantize_int8(path: Path) -> None:
    """Dynamic int8 weights, per channel, on the MatMuls, in place — except the feed-forward
    MatMuls (weights hidden x 4·hidden), whose outlier activations int8 cannot hold: min cosine
    0.995 vs fp32 on MiniLM where quantizing them too gave 0.976 (benchmarks/bench_quantize.py)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path), load_external_data=False)
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    feed_forward = [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and any(len(d) == 2 and max(d) == 4 * min(d) for d in (shapes[x] for x in node.input if x in shapes))
    ]
    target = path.with_suffix(".int8.onnx")
    with _quiet_quantizer():
        quantize_dynamic(
            str(path), str(target), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"], nodes_to_exclude=feed_forward
        )
    if not quantized_weights(target):
        target.unlink(missing_ok=True)
        msg = f"quantize_weights='int8': ONNX Runtime quantized no weight of {path.name} (no MatMul it could convert); use quantize_weights=None for this model"
        raise RuntimeError(msg)
    os.replace(target, path)


def quantized_weights(path: Path) -> int:
    """How many int8 weight matrices an ONNX file holds (0: not quantized)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2)


@contextlib.contextmanager
def _quiet_quantizer() -> Any:
    """ONNX Runtime's quantizer logs "Please consider to run pre-processing" on the root logger
    for every model (advice for static quantization, which this is not), and through
    ``logging.warning`` installs a handler on the root logger as it does. Drop that one line,
    pass its other messages on as Python would, and leave the root logger as it was."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing before quantization" not in record.getMessage()

    class _LastResort(logging.Handler):  # stands in for basicConfig's handler while none is set
        def emit(self, record: logging.LogRecord) -> None:
            if logging.lastResort is not None and record.levelno >= logging.lastResort.level:
                logging.lastResort.handle(record)

    root, drop = logging.getLogger(), _Drop()
    stand_in = _LastResort() if not root.handlers else None
    if stand_in is not None:
        root.addHandler(stand_in)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if stand_in is not None:
            root.removeHandler(stand_in)


def check_export(path: Path, arrays: dict[str, Any], expected: Any, label: str, mask: Any = None, min_cosine: float | None = None) -> None:
    """Refuse an export whose output differs from torch's (on a padded batch for text: the real
    tokens are compared, ``mask``), before it is cached; a quantized one is held to
    ``min_cosine`` between mean-pooled vectors instead."""
    import numpy as np

    got = Session(path, threads=1)(arrays)[0]
    if min_cosine is not None:
        weights = mask if mask is not None else np.ones(got.shape[:-1] + (1,), got.dtype)
        a, b = (got * weights).sum(1), (expected * weights).sum(1)
        cosine = float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())
        if cosine < min_cosine:
            msg = (
                f"{label}: the quantized export reaches cosine {cosine:.4f} against torch (< {min_cosine}); use quantize_weights=None for this model"
            )
            raise RuntimeError(msg)
        return
    diff = np.abs(got - expected)
    if mask is not None:
        diff = diff * mask
    error = float(diff.max())
    if error > 1e-3:
        msg = f"{label}: the ONNX export differs from torch by {error:.3g}; use backend='torch' for this model"
        raise RuntimeError(msg)
