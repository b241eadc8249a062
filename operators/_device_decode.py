"""Images decoded and transformed on the model's device: the CPU threads only read the files'
bytes; a batch of JPEGs is decoded at once (``torchvision.io.decode_jpeg``: nvJPEG on CUDA),
resized, cropped and normalised there, as timm's eval transform does on the CPU. What the JPEG
decoder cannot read (PNG, CMYK, a corrupt file) falls back to the CPU path per file — same rows,
same errors.

The same code runs on the CPU (libjpeg through torchvision), which is how its parity with the
PIL path is tested without a GPU.

>>> import numpy as np, torch
>>> pixels = to_pixels(decode_on([("a", np.zeros((30, 40, 3), np.uint8))], "cpu"), {"input_size": (3, 8, 8), "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3})
>>> tuple(pixels.shape), float(pixels.abs().max())
((1, 3, 8, 8), 0.0)
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedflow.io.remote import open_input

from .image_decode import ImageDecodeError, decode_image

JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class Encoded:
    """A batch of images still encoded (bytes) or already decoded (RGB arrays), with labels
    for errors; no tensors inside, so the engine leaves it on the CPU for the decoder."""

    items: list[tuple[str, Any]]


def read_encoded(source: Any) -> tuple[str, Any]:
    """``(label, bytes)`` of a path, URL or bytes — the CPU's share of the work; a PIL image or
    an array is decoded here (``(label, RGB array)``)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>", bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            with open_input(source) as f:
                return repr(str(source)), f.read()
        except FileNotFoundError as exc:
            msg = f"image {str(source)!r} does not exist (check the path)"
            raise ImageDecodeError(msg) from exc
    return type(source).__name__, decode_image(source)


def decode_on(items: list[tuple[str, Any]], device: str) -> list[Any]:
    """CHW uint8 tensors on ``device``: JPEGs decoded there in one call, the rest (and any JPEG
    the batch decoder refuses) on the CPU with the PIL path."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[Any] = [None] * len(items)
    jpegs = [i for i, (_label, data) in enumerate(items) if isinstance(data, bytes) and data[:3] == JPEG_MAGIC]
    if jpegs:
        datas = [torch.frombuffer(bytearray(items[i][1]), dtype=torch.uint8) for i in jpegs]
        fence(device)
        with warnings.catch_warnings():  # torchvision 0.29 points at torchcodec; the decoder itself is what we want
            warnings.filterwarnings(
                "ignore", message=".*image decoding and encoding capabilities of TorchVision are deprecated", category=DeprecationWarning
            )
            try:
                decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
            except RuntimeError:  # one file it cannot read fails the call: the others one by one
                decoded = [_one_jpeg(d, device) for d in datas]
        for i, tensor in zip(jpegs, decoded):
            out[i] = tensor
    for i, (label, data) in enumerate(items):
        if out[i] is None:
            try:
                rgb = decode_image(data) if isinstance(data, bytes) else data
            except ImageDecodeError as exc:
                raise ImageDecodeError(f"image {label}: {exc}") from exc
            out[i] = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(device)
    return out


def fence(device: str) -> None:
    """On CUDA, wait until the work queued on this thread's current stream is done. nvJPEG
    (torchvision's ``decode_jpegs_cuda``) writes on its own stream into memory allocated for the
    current stream, without waiting for it: a block the allocator hands back while queued work
    still reads it would be overwritten — seen on an H200 as wrong vectors (min cosine 0.76
    against the PIL path). Afterwards torchvision makes the current stream wait for its own
    (an event, on the GPU), so nothing reads a picture before it is written. The engine decodes
    on a stream of its own in a thread of its own (``prepare_on_device``): this waits for that
    stream's previous resize only, never for the model's work, and no device-wide synchronize
    is left on the hot path."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.current_stream(device).synchronize()


def _one_jpeg(data: Any, device: str) -> Any:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    except RuntimeError:
        return None  # the CPU path decodes it, or names the error


def to_pixels(images: list[Any], config: dict[str, Any], scale: tuple[Any, Any] | None = None) -> Any:
    """timm's eval transform on tensors, on their device: resize the shorter side to
    ``size / crop_pct`` (antialiased), centre crop, scale to [0, 1], normalise — by ``scale``
    (``(mean, std)`` tensors on the device, from :func:`.._pixels.pixel_scale`, made once) when
    given, else by the config's numbers."""
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tf

    if config.get("crop_mode", "center") != "center":
        msg = f"decode='device' does timm's centre crop; this model's transform uses crop_mode={config['crop_mode']!r}: use decode='cpu'"
        raise ValueError(msg)
    height, width = config["input_size"][1:]
    side = math.floor(min(height, width) / config.get("crop_pct", 1.0))
    mode = InterpolationMode.BICUBIC if config.get("interpolation") == "bicubic" else InterpolationMode.BILINEAR
    crops = [tf.center_crop(_resize(img, side, mode), [height, width]) for img in images]
    batch = torch.stack(crops).float().clamp_(0, 255).div_(255)
    if scale is not None:
        return batch.sub_(scale[0]).div_(scale[1])
    return tf.normalize(batch, list(config["mean"]), list(config["std"]))


def _resize(img: Any, scale: int, mode: Any) -> Any:
    """The shorter side to ``scale``, antialiased, in uint8 where the device can (it then
    matches PIL's resize to within 1 level; in float the mean difference is ~0.3 levels)."""
    from torchvision.transforms.v2 import functional as tf

    try:
        return tf.resize(img, [scale], interpolation=mode, antialias=True)
    except RuntimeError:  # no uint8 kernel for this mode on this device
        return tf.resize(img.float(), [scale], interpolation=mode, antialias=True)
