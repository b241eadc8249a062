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

from ..hooks import PadsToWidths, SortsBySize
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
    sort_key = op.sort_key if cut.sorts and isinstance(op, SortsBySize) else None
    good: list[tuple[int, Any, int]] = []
    for i, item in enumerate(items):
        if isinstance(item, Raised):
            packed.errors.append((i, item))
            continue
        try:
            good.append((i, item, sort_key(item) if sort_key is not None else 0))
        except Exception as exc:  # noqa: BLE001 - named or skipped with its row, where the rows are
            packed.errors.append((i, Raised(exc)))
    width = op.padded_size if cut.sorts and isinstance(op, PadsToWidths) else None
    for group in cut_window(good, cut.batch_size, key=(lambda g: g[2]) if sort_key is not None else None, max_tokens=cut.max_tokens, width=width):
        positions = np.fromiter((g[0] for g in group), np.int32, len(group))
        try:
            packed.batches.append((positions, map_tensors(op.collate([g[1] for g in group]), _Array.of)))
        except Exception:  # noqa: BLE001 - a batch that does not collate: prepared where the rows are, row by row
            packed.unbatched.extend(int(p) for p in positions)
    return packed


@dataclass
class _Array:
    """A tensor travelling between processes as its numpy array, packed small: an integer or
    boolean array whose values are all one value travels as that value (token type ids: all
    zeros), one whose values fit a narrower integer type travels in it (token ids in 2 bytes,
    a 0/1 mask in 1, instead of 8 each) and is widened again on arrival (one vectorised copy).

    Torch's own unpickling ran ~0.4 ms of Python per tensor in the main process (the text chain
    with 2 tokenizer processes and a no-op forward: 15.3 µs of main-process CPU per text with
    arrays, 25.1 with tensors, one run each); MiniLM's three int64 arrays came to 1,536 bytes
    per text through the pipe, 2.0–2.5 µs of the main process's CPU per text to read
    (benchmarks/bench_host.py), 192 bytes per text packed small.

    >>> import torch
    >>> [(a.array.dtype.name if a.array is not None else a.fill) for a in map(_Array.of, (torch.tensor([3, 40000]), torch.zeros(4, dtype=torch.int64), torch.tensor([-1, 1])))]
    ['uint16', 0, 'int16']
    """

    array: Any  # the values (narrowed), or None when they are all ``fill``
    dtype: str  # the tensor's numpy dtype
    shape: tuple[int, ...]
    fill: Any = None

    @staticmethod
    def of(tensor: Any) -> _Array:
        import numpy as np

        values = tensor.numpy()
        kind, dtype = values.dtype.kind, values.dtype.str
        if kind not in "iub" or values.size == 0:
            return _Array(values, dtype, values.shape)
        low, high = values.min(), values.max()
        if low == high:
            return _Array(None, dtype, values.shape, low.item())
        if kind != "b":
            narrow = np.result_type(np.min_scalar_type(low), np.min_scalar_type(high))
            if narrow.itemsize < values.itemsize:
                values = values.astype(narrow)
        return _Array(values, dtype, values.shape)

    def tensor(self) -> Any:
        """The tensor again, in its own dtype (no copy when it travelled as it was)."""
        import numpy as np
        import torch

        dtype = np.dtype(self.dtype)
        if self.array is None:
            return torch.from_numpy(np.full(self.shape, self.fill, dtype))
        values = self.array if self.array.dtype == dtype else self.array.astype(dtype)
        return torch.from_numpy(values)


def unpacked(collated: Any) -> Any:
    """A collated batch from :func:`prepare_batches` with its tensors back (dtype and values as
    the worker's collate made them); dicts, lists and tuples are walked.

    >>> import torch
    >>> batch = unpacked({"ids": _Array.of(torch.tensor([1, 70000])), "types": _Array.of(torch.zeros(2, dtype=torch.int64))})
    >>> batch["ids"].tolist(), batch["ids"].dtype, batch["types"].tolist(), batch["types"].dtype
    ([1, 70000], torch.int64, [0, 0], torch.int64)
    """
    if isinstance(collated, _Array):
        return collated.tensor()
    if type(collated) is dict:
        return {k: unpacked(v) for k, v in collated.items()}
    if type(collated) in (list, tuple):
        return type(collated)(unpacked(v) for v in collated)
    return collated
