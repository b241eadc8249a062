"""CUDA graphs: a model's whole forward launched by one call.

On a fast GPU a small model's forward is bound by launching its kernels, not by running
them: MiniLM launches ~130 per batch, each a Python call that gives up the GIL and must win it
back from the pipeline's other threads (measured on an H200: the forward alone 62,115
texts/s, the same forward inside the chain 10,677/s with its thread 98% busy). A CUDA graph
records those launches once per input shape and replays them with one call.

:class:`GraphRunner` does that for an operator that says its ``forward`` can be recorded
(``cuda_graphs = True``: the same shapes give the same kernels, and nothing reads a value
back to the CPU). Per batch signature (the shapes and dtypes of its tensors) it runs the forward
once as usual under :mod:`.capture_probe` (a forward that lifts host data, reads a value back or
computes a data-dependent shape is never recorded: graphs turn off with one warning naming the
operations), records a graph, checks the graph's output against ``forward`` run as usual on that
batch (cosine >= 0.999 per row for floats, equal otherwise) and from then on copies each
batch into the graph's input buffers and replays it. It stops recording after
``MAX_GRAPHS`` signatures (later shapes run as usual). A signature whose recording runs out
of memory runs as usual; if recording fails otherwise or a graph's output differs, it warns
once and runs every batch as usual from then on — and the thread is back on the stream it
was on (``torch.cuda.graph`` leaves it on the recording stream when ``capture_end`` raises).

Each replay's outputs are copied out of the graph's buffers on the stream right after it (a
later replay cannot overwrite them), and replays of one runner are serialised by a lock (two
runs of one chain at once share its operator). Set ``EMBEDFLOW_CUDA_GRAPHS=0`` to turn graphs
off.

>>> graphs_wanted(object(), "cuda:0"), graphs_wanted(object(), "cpu")
(False, False)
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import user_stacklevel
from .capture_probe import DATA_SHAPES, HOST_DATA, READ_BACK, probed
from .devices import is_out_of_memory, map_tensors

MAX_GRAPHS = 64  # signatures recorded per replica (text: ~12 bucketed widths × a few batch sizes)
MIN_COSINE = 0.999  # a graph's output against the usual forward, per row


def graphs_wanted(op: Any, device: str) -> bool:
    """Whether ``op`` runs through CUDA graphs on ``device``: a CUDA device, an operator that
    says its forward can be recorded (``cuda_graphs = True``), and ``EMBEDFLOW_CUDA_GRAPHS``
    not ``0``."""
    return device.startswith("cuda") and getattr(op, "cuda_graphs", False) is True and os.environ.get("EMBEDFLOW_CUDA_GRAPHS", "1") != "0"


def signature(batch: Any) -> tuple[Any, ...] | None:
    """The shapes and dtypes of a batch's tensors in order, with its structure; None when it
    holds anything but tensors (dicts, lists and tuples of tensors are fine)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return ("t", tuple(batch.shape), batch.dtype)
    if isinstance(batch, dict):
        parts = [(k, signature(v)) for k, v in batch.items()]
        return None if any(p is None for _k, p in parts) else ("d", tuple(parts))
    if isinstance(batch, (list, tuple)):
        items = [signature(v) for v in batch]
        return None if any(p is None for p in items) else ("l", type(batch).__name__, tuple(items))
    return None


def _leaves(tree: Any) -> list[Any]:
    out: list[Any] = []

    def keep(t: Any) -> Any:
        out.append(t)
        return t

    map_tensors(tree, keep)
    return out


def same_output(expected: Any, got: Any) -> bool:
    """Whether two forward outputs agree: per row cosine >= ``MIN_COSINE`` for float tensors,
    equality for the others; the same structure and shapes."""
    import torch

    a, b = _leaves(expected), _leaves(got)
    if len(a) != len(b) or any(x.shape != y.shape or x.dtype != y.dtype for x, y in zip(a, b)):
        return False
    for x, y in zip(a, b):
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return False
            continue
        rows = x.shape[0] if x.dim() else 1
        x2, y2 = x.float().reshape(rows, -1), y.float().reshape(rows, -1)
        if not (torch.isfinite(x2).all() and torch.isfinite(y2).all()):
            return False
        cos = torch.nn.functional.cosine_similarity(x2, y2, dim=1, eps=1e-12)
        tiny = (x2.norm(dim=1) < 1e-6) & (y2.norm(dim=1) < 1e-6)  # two zero rows agree
        if not bool((cos.ge(MIN_COSINE) | tiny).all()):
            return False
    return True


def _hazard_text(hazards: list[str]) -> str:
    """What :func:`.capture_probe.probed` found, said for a user.

    >>> _hazard_text(["is_nonzero", "lift_fresh"])
    'reads a value back to the CPU (is_nonzero) and lifts host data to the device (lift_fresh)'
    """
    kinds = [
        ("reads a value back to the CPU", [h for h in hazards if h in READ_BACK]),
        ("lifts host data to the device", [h for h in hazards if h in HOST_DATA]),
        ("computes data-dependent shapes", [h for h in hazards if h in DATA_SHAPES or "boolean" in h]),
    ]
    return " and ".join(f"{what} ({', '.join(ops)})" for what, ops in kinds if ops)


class _Graph:
    """One recorded forward: its input buffers, the graph and its output buffers."""

    def __init__(self, inputs: Any, graph: Any, outputs: Any):
        self.inputs, self.graph, self.outputs = inputs, graph, outputs

    def replay(self, batch: Any) -> Any:
        """The graph run on ``batch``: its outputs copied out of the graph's buffers (queued on
        the stream right after, so no later replay can overwrite them first)."""
        for buffer, value in zip(_leaves(self.inputs), _leaves(batch)):
            buffer.copy_(value, non_blocking=True)
        self.graph.replay()
        return map_tensors(self.outputs, lambda t: t.clone())


class GraphRunner:
    """Runs ``forward`` (an operator's, on batches already on ``device``) through CUDA graphs;
    see the module docstring. One per replica, kept across runs."""

    def __init__(self, forward: Callable[[Any], Any], device: str, label: str):
        self.forward, self.device, self.label = forward, device, label
        self.graphs: dict[Any, _Graph] = {}
        self.off: str | None = None  # why graphs were turned off, once they are
        self.pool: Any = None  # one memory pool shared by the graphs (one replays at a time)
        self.unrecorded: set[Any] = set()  # signatures whose recording ran out of memory: run as usual
        self._lock = threading.Lock()

    def __call__(self, batch: Any) -> Any:
        """``forward(batch)``: replayed from a graph when one fits, else run as usual."""
        key = signature(batch) if self.off is None else None
        if key is None:
            return self.forward(batch)
        with self._lock:
            graph = self.graphs.get(key)
            if graph is not None:
                return graph.replay(batch)
            if len(self.graphs) >= MAX_GRAPHS or self.off is not None or key in self.unrecorded:
                return self.forward(batch)
            return self._record(key, batch)

    def _record(self, key: Any, batch: Any) -> Any:
        """The first batch of a signature: run as usual, record a graph, check its replay."""
        # also the warm-up the recording needs (lazy inits, cuBLAS handles), watched for what a graph cannot hold
        expected, hazards = probed(self.forward, batch)
        if hazards:
            self._turn_off(f"its forward {_hazard_text(hazards)}, which a CUDA graph cannot record")
            return expected
        try:
            recorded = self._capture(map_tensors(batch, lambda t: t.clone()))
            got = recorded.replay(batch)
            agrees = same_output(expected, got)
        except Exception as exc:  # noqa: BLE001 - any failure to record: run as usual, say so once
            if is_out_of_memory(exc):  # no room for this shape's graph now (an OOM retry's halves)
                self.unrecorded.add(key)
                return expected
            self._turn_off(f"recording a CUDA graph failed ({type(exc).__name__}: {exc})")
            return expected
        if not agrees:
            self._turn_off("a CUDA graph's output differed from the usual forward's (cosine < 0.999)")
            return expected
        self.graphs[key] = recorded
        return got

    def _capture(self, inputs: Any) -> _Graph:
        """``forward(inputs)`` recorded into a graph (after a warm-up on the recording stream,
        as torch's documentation asks); its memory pool shared with the other graphs."""
        import torch

        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.forward(inputs)
        prior = torch.cuda.current_stream(self.device)
        prior.wait_stream(side)
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=side, capture_error_mode="thread_local"):
                outputs = self.forward(inputs)
        finally:  # torch.cuda.graph's exit leaves this thread on the side stream when capture_end raises
            if torch.cuda.current_stream(self.device) != prior:
                torch.cuda.set_stream(prior)
        self.pool = graph.pool()
        return _Graph(inputs, graph, outputs)

    def _turn_off(self, why: str) -> None:
        self.off = why
        self.graphs.clear()
        warnings.warn(
            f"{self.label}: {why}; running every batch without CUDA graphs (slower launches, the same results). "
            "EMBEDFLOW_CUDA_GRAPHS=0 skips the attempt",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


_runners: weakref.WeakKeyDictionary[Any, GraphRunner] = weakref.WeakKeyDictionary()
_runners_lock = threading.Lock()


def runner_for(op: Any, device: str, label: str) -> GraphRunner | None:
    """The graph runner of ``op`` (a replica on ``device``), kept as long as ``op`` so that its
    graphs serve later runs too; None when graphs are not wanted (:func:`graphs_wanted`)."""
    if not graphs_wanted(op, device):
        return None
    with _runners_lock:
        runner = _runners.get(op)
        if runner is None:
            ref = weakref.ref(op)  # the runner must not keep its operator alive

            def forward(batch: Any) -> Any:
                return ref().forward(batch)  # type: ignore[union-attr]

            runner = _runners[op] = GraphRunner(forward, device, label)
        return runner
