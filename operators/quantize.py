"""``quantize``: vectors to int8, uint8 or packed bits, with sentence-transformers'
``quantize_embeddings`` semantics (same formulas, same calibration).

* ``int8`` / ``uint8``: each dimension's range ``[min, max]`` is cut into 255 steps (values
  outside it are clipped to the ends); the range
  comes from ``ranges`` (2 x dim: mins, maxes) or from ``calibration`` embeddings (an array, or
  a ``.npy`` file of them). A stream has no "whole input" to calibrate on as
  ``SentenceTransformer.encode`` does, so one of the two is required.
* ``binary`` (int8, ``packbits(v > 0) - 128``) / ``ubinary`` (uint8, ``packbits(v > 0)``): one bit
  per dimension, 8 per byte; no calibration.

>>> import embedflow as ef, numpy as np
>>> ef.dc([np.array([0.5, -1.0, 2.0, 0.1, -0.3, 0.0, 1.0, 1.0])]).quantize(precision="ubinary").to_list()
[array([179], dtype=uint8)]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedflow import Operator

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(op: str, precision: str, ranges: Any, calibration: Any) -> np.ndarray | None:
    """The (2, dim) calibration ranges ``precision`` needs (None when it needs none); a clear
    error for an unknown precision or a missing calibration."""
    if precision not in PRECISIONS:
        msg = f"{op}: precision={precision!r} is not one of {', '.join(map(repr, PRECISIONS))}"
        raise ValueError(msg)
    if precision not in ("int8", "uint8"):
        return None
    if ranges is not None:
        found = np.asarray(ranges, dtype=np.float32)
    elif calibration is not None:
        sample = np.load(calibration) if isinstance(calibration, (str, Path)) else np.asarray(calibration, dtype=np.float32)
        found = np.vstack((sample.min(axis=0), sample.max(axis=0)))
    else:
        msg = (
            f"{op}: precision={precision!r} needs a calibration: calibration= (embeddings, or a .npy file of them, "
            "e.g. a few thousand of your corpus) or ranges= (2 x dim: each dimension's min and max)"
        )
        raise ValueError(msg)
    if found.ndim != 2 or found.shape[0] != 2:
        msg = f"{op}: ranges must have shape (2, dim) — mins and maxes — got {found.shape}"
        raise ValueError(msg)
    return found


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """``vectors`` (n, dim) at ``precision``, as ``sentence_transformers.quantize_embeddings``."""
    if precision == "float32":
        return vectors.astype(np.float32, copy=False)  # the engine hands over memory the results may own
    if precision in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed - 128).astype(np.int8) if precision == "binary" else packed
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)  # a constant dimension: every value in bucket 0
    buckets = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)


class Quantize(Operator):
    """Quantize vectors to int8, uint8 or packed bits, as sentence-transformers does.

    ``precision`` is ``"float32"``, ``"int8"``, ``"uint8"``, ``"binary"`` or ``"ubinary"``;
    ``int8``/``uint8`` take ``ranges`` or ``calibration`` (see the module docstring).

    >>> Quantize(precision="uint8", ranges=[[0.0, 0.0], [1.0, 2.0]]).preprocess(np.array([0.5, 2.0]))
    array([127, 254], dtype=uint8)
    """

    threaded = False  # a few microseconds of numpy: runs inline with its neighbours

    def __init__(self, precision: str, ranges: Any = None, calibration: Any = None):
        self.precision = precision
        self.ranges = check_precision("quantize", precision, ranges, calibration)
        self.calibration = None if calibration is None else "..."  # shown in repr, not kept

    def preprocess(self, vector: Any) -> np.ndarray:
        return quantize(np.asarray(vector, dtype=np.float32)[None], self.precision, self.ranges)[0]
