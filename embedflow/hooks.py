"""The operator contract as types: :class:`ModelOperator`, what every batchable operator
provides, and one Protocol per optional hook an engine looks for — instead of probing for
method names. An engine asks ``isinstance(op, SortsBySize)`` (the Protocols are
runtime-checkable) and the type checker then knows ``op.sort_key`` exists.

>>> import embedflow as ef
>>> class Lengths(ef.Operator):
...     batchable = True
...     def sort_key(self, item):
...         return len(item)
>>> isinstance(Lengths(), SortsBySize), isinstance(Lengths(), CastsWeights)
(True, False)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Placement:
    """What the engine decided for one replica of an operator, handed over before its setup:
    the ``device``; the CPU ``threads`` a runtime of the operator's own may use (an ONNX
    Runtime session; 0: that library's default); and ``fixed_shapes``: whether batches should
    come in a few fixed shapes (texts padded to width buckets) — on CUDA, where each shape is
    one CUDA-graph recording and allocator blocks are reused. Device-dependent choices belong
    to the engine; an operator that takes this does not guess them from the device's name.

    >>> Placement("cuda:0", threads=4, fixed_shapes=True).fixed_shapes
    True
    """

    device: str
    threads: int = 0
    fixed_shapes: bool = False


def placed(placement: Placement | None, device: str) -> Placement:
    """``placement`` when the engine gave one for ``device``, else the choices of no engine
    (an operator set up by hand): the library's threads, shapes as they come.

    >>> placed(None, "cuda").fixed_shapes
    False
    """
    return placement if placement is not None and placement.device == device else Placement(device)


@runtime_checkable
class ModelOperator(Protocol):
    """A batchable operator: items prepared one by one, collated, run as a batch, split."""

    batchable: bool

    def preprocess(self, *inputs: Any) -> Any: ...
    def collate(self, items: list[Any]) -> Any: ...
    def forward(self, batch: Any) -> Any: ...
    def postprocess(self, output: Any) -> list[Any]: ...


@runtime_checkable
class SortsBySize(Protocol):
    """Prepared items have a size (tokens): batches are cut from a sorted window so they pad little."""

    def sort_key(self, item: Any) -> int: ...


@runtime_checkable
class PadsToWidths(Protocol):
    """A batch whose longest item has ``size`` is padded to ``padded_size(size)`` (buckets)."""

    def padded_size(self, size: int) -> int: ...


@runtime_checkable
class PreparesInBatches(Protocol):
    """Prepares many items in one call (a fast tokenizer); item by item only when it fails."""

    def preprocess_batch(self, inputs: list[Any]) -> list[Any]: ...


@runtime_checkable
class PreparesAlone(Protocol):
    """Can set up only what ``preprocess`` needs, so a worker process (or a Ray task) prepares
    items without loading the model."""

    def setup_preprocess(self, device: str) -> None: ...


@runtime_checkable
class TakesPlacement(Protocol):
    """Takes the engine's :class:`Placement` before ``setup`` or ``setup_preprocess`` (in the
    same process, on the same device)."""

    def place(self, placement: Placement) -> None: ...


@runtime_checkable
class IdentifiesWeights(Protocol):
    """Says what identifies the weights its parameters load — for files,
    :func:`embedflow.models.files_identity` — so an incremental run recomputes when they change;
    ``None`` for weights nothing identifies (a random initialisation): reused in one process only."""

    @classmethod
    def weights_identity(cls, params: dict[str, Any]) -> str | None: ...


@runtime_checkable
class PreparesOnDevice(Protocol):
    """Device work before ``forward`` (images decoded and resized on the GPU), staged by the engine."""

    def prepare_on_device(self, batch: Any) -> Any: ...


@runtime_checkable
class CastsWeights(Protocol):
    """Casts its weights to fp16/bf16 itself (True when it did): no autocast then."""

    def cast_weights(self, dtype: Any) -> bool: ...


@runtime_checkable
class WarnsAfterRun(Protocol):
    """What to tell the user once a run ends (texts cut to the length limit)."""

    def run_warnings(self) -> list[str]: ...


@runtime_checkable
class CountsEvents(Protocol):
    """Counts events (``truncated``) that worker processes add up for ``run_warnings``."""

    run_counts: Counter[str]


@runtime_checkable
class NamesItsBackend(Protocol):
    """Says which backend it runs (``onnx``, ``torch``), for ``explain(analyze=True)``."""

    backend_used: str
