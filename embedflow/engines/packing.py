"""Batches made where the items are prepared: a preprocessing worker process prepares a window
of inputs, sorts and cuts it and collates each batch, and hands back a few packed arrays per
batch instead of one Python object per row — so the main process moves batches, not rows.

Measured on this 2-core machine (benchmarks/bench_host.py: the text chain with 1 tokenizer
process and a no-op forward), the main process spent 16.7 µs of CPU per text when the worker
sent back one dict of token ids per text (unpickled, sized, windowed, sorted, cut and collated
here), 8.5 µs with packed batches (7.7 in another run).

>>> import embedflow as ef
>>> class Length(ef.Operator):
...     batchable = True
...     def preprocess(self, text):
...         return len(text)
...     def sort_key(self, item):
...         return item
...     def collate(self, items):
...         return items
>>> packed = prepare_batches(Length(), Cut([("ccc",), ("a",), ("bb",)], batch_size=2, max_tokens=None, sorts=True))
>>> packed.errors, [(pos.tolist(), batch) for pos, batch in packed.batches]
([], [([1, 2], [1, 2]), ([0], [3])])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..operator import Operator
from .cutting import cut_window
from .devices import map_tensors
from .preprocess import Raised, preprocess_items


@dataclass
class Cut:
    """A request to a worker: prepare ``inputs`` (input tuples) and cut them into batches of at
    most ``batch_size`` items and ``max_tokens`` padded tokens, sorted by size when ``sorts``."""

    inputs: list[Any]
    batch_size: int
    max_tokens: int | None
    sorts: bool


@dataclass
class Packed:
    """The answer: the inputs that failed (position, :class:`Raised`), the batches (each the
    positions of its inputs in the request, and the collated batch) and the positions of inputs
    whose batch did not collate (the caller prepares those itself, row by row)."""

    errors: list[tuple[int, Raised]] = field(default_factory=list)
    batches: list[tuple[Any, Any]] = field(default_factory=list)
    unbatched: list[int] = field(default_factory=list)


def prepare_batches(op: Operator, cut: Cut) -> Packed:
    """``cut``'s inputs prepared (:func:`.preprocess.preprocess_items`), sorted, cut
    (:func:`.cutting.cut_window`, with the operator's ``padded_size``) and collated."""
    import numpy as np

    items = preprocess_items(op, cut.inputs)
    packed = Packed()
    sort_key = getattr(op, "sort_key", None) if cut.sorts else None
    good: list[tuple[int, Any, int]] = []
    for i, item in enumerate(items):
        if isinstance(item, Raised):
            packed.errors.append((i, item))
            continue
        try:
            good.append((i, item, sort_key(item) if sort_key is not None else 0))
        except Exception as exc:  # noqa: BLE001 - named or skipped with its row, where the rows are
            packed.errors.append((i, Raised(exc)))
    width = getattr(op, "padded_size", None) if cut.sorts else None
    for group in cut_window(good, cut.batch_size, key=(lambda g: g[2]) if sort_key is not None else None, max_tokens=cut.max_tokens, width=width):
        positions = np.fromiter((g[0] for g in group), np.int32, len(group))
        try:
            packed.batches.append((positions, map_tensors(op.collate([g[1] for g in group]), _Array.of)))
        except Exception:  # noqa: BLE001 - a batch that does not collate: prepared where the rows are, row by row
            packed.unbatched.extend(int(p) for p in positions)
    return packed


@dataclass
class _Array:
    """A tensor travelling between processes as its numpy array: torch's own unpickling ran
    ~0.4 ms of Python per tensor in the main process (the text chain with 2 tokenizer processes
    and a no-op forward: 15.3 µs of main-process CPU per text with arrays, 25.1 with tensors,
    one run each); made a tensor again without a copy."""

    array: Any

    @staticmethod
    def of(tensor: Any) -> _Array:
        return _Array(tensor.numpy())


def unpacked(collated: Any) -> Any:
    """A collated batch from :func:`prepare_batches` with its tensors back (no copy); dicts,
    lists and tuples are walked.

    >>> import torch
    >>> unpacked({"ids": _Array.of(torch.ones(2, dtype=torch.int64))})["ids"].tolist()
    [1, 1]
    """
    import torch

    if isinstance(collated, _Array):
        return torch.from_numpy(collated.array)
    if type(collated) is dict:
        return {k: unpacked(v) for k, v in collated.items()}
    if type(collated) in (list, tuple):
        return type(collated)(unpacked(v) for v in collated)
    return collated
