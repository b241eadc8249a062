"""``image_decode``: any image input -> an RGB ``uint8`` array of shape (height, width, 3).

Accepts a path (``str`` or ``pathlib.Path``), encoded ``bytes``, a PIL image or a numpy array.
EXIF orientation is applied; grayscale, palette, RGBA/LA (composited on white), CMYK, 16-bit
and float images are converted. A missing, truncated or non-image file raises an error that
names the file and the cause.

>>> import embedflow as ef, numpy as np
>>> img = ef.dc([np.zeros((4, 5), np.uint8)]).image_decode().to_list()[0]
>>> img.shape, img.dtype
((4, 5, 3), dtype('uint8'))
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedflow import Operator
from embedflow.io.remote import is_remote, local_path, open_input

from ._pixel_budget import DECODING

ORIENTATION = 0x0112  # the EXIF tag

WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """An input that cannot be turned into an image; the message names it and the cause."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def open_image(source: Any, draft: int | None = None, load: bool = True) -> Image.Image:
    """A fully loaded PIL image from a path, bytes or PIL image (numpy arrays: see to_rgb);
    with ``draft``, a JPEG is decoded directly at the smallest 1/2–1/8 scale whose sides
    stay at least ``draft`` pixels (PIL's draft mode: much faster, pixels change slightly).
    ``load=False``: only the header is read (size, mode); :func:`load_image` decodes."""
    if isinstance(source, Image.Image):
        return source
    with _decoding(source):
        if isinstance(source, (str, os.PathLike)) and is_remote(source):
            with open_input(source) as f:  # s3://, https://, ...: read once, decoded from memory
                img = Image.open(io.BytesIO(f.read()))
        elif isinstance(source, (str, os.PathLike)):
            img = Image.open(Path(local_path(source)))
        elif isinstance(source, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(source)))
        else:
            msg = f"image_decode cannot read a {type(source).__name__}: give a file path, bytes, a PIL image or a numpy array"
            raise ImageDecodeError(msg)
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", (draft, draft))
    return load_image(img, source) if load else img


def load_image(img: Image.Image, source: Any) -> Image.Image:
    """Decode ``img`` (opened from ``source``) now, so that truncation is found here, not later."""
    with _decoding(source):
        img.load()
    return img


@contextlib.contextmanager
def _decoding(source: Any) -> Iterator[None]:
    """Pillow's errors while opening or decoding ``source`` as one ImageDecodeError naming it."""
    try:
        yield
    except ImageDecodeError:
        raise
    except FileNotFoundError as exc:
        msg = f"image {_describe(source)} does not exist (check the path)"
        raise ImageDecodeError(msg) from exc
    except UnidentifiedImageError as exc:
        msg = f"image {_describe(source)} is not an image file Pillow can read"
        raise ImageDecodeError(msg) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        msg = f"image {_describe(source)} could not be decoded: {exc} (truncated or corrupt file?)"
        raise ImageDecodeError(msg) from exc


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        top = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
        return (np.clip(np.nan_to_num(arr), 0, top) * (255.0 / top) + 0.5).astype(np.uint8)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    peak = 65535 if arr.dtype.itemsize >= 2 and int(arr.max(initial=0)) > 255 else 255
    return (np.clip(arr.astype(np.float64), 0, peak) * (255.0 / peak) + 0.5).astype(np.uint8)


def pil_to_rgb(img: Image.Image, max_side: int | None = None) -> np.ndarray:
    """Orientation applied, colour converted: the RGB uint8 array of a PIL image; with
    ``max_side``, shrunk on Pillow's side first, so a large image is never copied in full."""
    if img.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies even an upright image
        img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grayscale
        return _shrunk(array_to_rgb(np.asarray(img)), max_side)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        img = _composite_on_white(img)
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.array(_shrunk_image(img, max_side), dtype=np.uint8)  # one copy, writable


def array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """An HxW, HxWx1, HxWx3 or HxWx4 array of any numeric dtype as RGB uint8."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        gray = _high_depth_to_uint8(arr)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr8 = _high_depth_to_uint8(arr)
        if arr.shape[2] == 4:
            return np.array(_composite_on_white(Image.fromarray(arr8, "RGBA")), dtype=np.uint8)
        return np.ascontiguousarray(arr8)
    msg = f"image_decode: an array of shape {arr.shape} is not an image (expected HxW, HxWx3 or HxWx4)"
    raise ImageDecodeError(msg)


def decode_image(source: Any, max_side: int | None = None, draft: bool = False) -> np.ndarray:
    """Any supported image input as an RGB uint8 array of shape (height, width, 3); with
    ``max_side``, shrunk (aspect kept) so that no side exceeds it, from a JPEG decoded in
    draft mode when ``draft`` (see :func:`open_image`).

    >>> decode_image(np.zeros((2, 2, 4), np.uint8)).shape
    (2, 2, 3)
    >>> decode_image(np.zeros((400, 100), np.uint8), max_side=200).shape
    (200, 50, 3)
    """
    if isinstance(source, np.ndarray):
        return _shrunk(array_to_rgb(source), max_side)
    img = open_image(source, max_side if draft else None, load=False)  # the header: its size
    held = 0 if isinstance(source, Image.Image) else img.width * img.height  # a PIL image is decoded already
    with DECODING.hold(held):  # large images decode a few at a time (operators/_pixel_budget.py)
        load_image(img, source)
        try:
            return pil_to_rgb(img, max_side)
        except (OSError, ValueError) as exc:
            msg = f"image {_describe(source)} could not be converted to RGB: {exc}"
            raise ImageDecodeError(msg) from exc


def _shrunk_image(img: Image.Image, max_side: int | None) -> Image.Image:
    """``img`` with no side longer than ``max_side`` (aspect kept; bicubic, antialiased: exact,
    no box pre-reduce)."""
    width, height = img.size
    if max_side is None or max(height, width) <= max_side:
        return img
    scale = max_side / max(height, width)
    return img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BICUBIC)


def _shrunk(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = rgb.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return rgb
    return np.asarray(_shrunk_image(Image.fromarray(rgb), max_side))


class ImageDecode(Operator):
    """Decode an image (path, bytes, PIL image or array) to an RGB ``uint8`` H×W×3 array.

    Parameters:
        max_side: shrink each image (aspect kept, bicubic) so that no side is longer; ``None``
            (default) keeps the full size. Models resize anyway: keep it well above the model's
            input (512 for 224-pixel models: a 4:3 photo's shorter side must stay above the 256
            the model's transform resizes to, or it is upscaled again and loses detail).
        draft: with ``max_side``, decode JPEGs directly at 1/2–1/8 scale (PIL's draft mode):
            several times faster on large photos, and the pixels change slightly (see the
            README for the measured speed and cosine against the exact path).

    Runs on the CPU, one item at a time, in the engine's thread pool.

    >>> import embedflow as ef, numpy as np
    >>> ef.dc([np.full((1, 1), 7, np.uint16)]).image_decode().to_list()[0].tolist()
    [[[7, 7, 7]]]
    """

    reads_files = True  # a path input is opened here

    def __init__(self, max_side: int | None = None, draft: bool = False):
        if max_side is not None and (not isinstance(max_side, int) or isinstance(max_side, bool) or max_side < 1):
            msg = f"image_decode: max_side={max_side!r} must be a positive number of pixels such as 512"
            raise ValueError(msg)
        if draft and max_side is None:
            msg = "image_decode: draft=True needs max_side= (the size the draft decode must keep, e.g. 512)"
            raise ValueError(msg)
        self.max_side, self.draft = max_side, bool(draft)

    def preprocess(self, source: Any) -> np.ndarray:
        return decode_image(source, self.max_side, self.draft)
