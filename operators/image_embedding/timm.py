"""``image_embedding.timm``: the pooled pre-logits features of a timm image model.

>>> import embedflow as ef, numpy as np
>>> img = np.zeros((64, 64, 3), np.uint8)
>>> vec = ef.dc([img]).image_embedding.timm(model_name="resnet18", pretrained=False).to_list()[0]
>>> vec.shape, str(vec.dtype)
((512,), 'float32')
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from embedflow import Operator
from embedflow.errors import did_you_mean
from embedflow.hooks import Placement
from embedflow.models import files_identity, locate_model, resolve_model, served_models

from .._device_decode import Encoded, decode_on, read_encoded, to_pixels
from .._layers import POOLS, LayerCatcher, pool_output
from .._onnx import Session, cache_key, check_backend, check_export, choose_backend, export_declined, export_module, exported, files_of
from .._pixels import normalize_batch, pixel_scale, split_transform
from ..image_decode import decode_image

DECODE_SIDE_PER_INPUT = 8  # the longest side decoded, per pixel of the model's input side

DECODES = ("auto", "cpu", "device")

# Model families for which ONNX Runtime was measured faster than torch (channels_last) on the
# CPU at parity, by at least 1.2x (benchmarks/bench_images.py: see RESULTS.md): backend="auto"
# picks it for these only. ResNet: 1.27x end to end (resnet18; forward alone 1.41x).
ONNX_MEASURED = ("resnet",)


class TimmImageEmbedding(Operator):
    """Embed images with a timm model: ``forward_head(forward_features(x), pre_logits=True)``.

    Parameters:
        model_name: a timm architecture (``resnet50``, ``efficientnet_lite0`` ...).
        pretrained: load trained weights (default True): from an installed model package when
            one serves ``model_name`` (offline), else timm's own cache or the hub.
        checkpoint_path: a local checkpoint (``.pth`` / ``.safetensors``) to load instead;
            read with ``weights_only=True``.
        layer: instead of the pooled pre-logits features, the output of this module (a name
            from ``model.named_modules()`` such as ``"layer3"``, or a negative index over the
            top-level layers), average-pooled over space to a vector (``pool="max"`` or
            ``"none"`` to change that).
        backend: ``"torch"``, ``"onnx"`` (ONNX Runtime on the CPU; exported once, checked and
            cached; not with ``layer=``) or ``"auto"`` (default): ONNX Runtime on the CPU for the
            families measured >= 1.2x faster there (ResNet), when installed; torch otherwise.
        decode: where a path or bytes input is decoded: ``"cpu"`` (PIL, in the engine's
            threads), ``"device"`` (the threads read bytes; JPEGs are decoded in batches on the
            model's device — nvJPEG on CUDA — and resized, cropped and normalised there; other
            formats fall back to PIL per file), or ``"auto"`` (default): ``device`` on CUDA,
            ``cpu`` elsewhere. Inputs decoded earlier (an ``image_decode`` step) skip it.
        channels_last: run in the channels-last memory layout; default: on for models with
            2-D convolutions (+21% images/s for resnet18 on a 2-core CPU, and the layout GPU
            tensor cores want), off otherwise. The values are the same up to float rounding.
        **create_kwargs: passed to ``timm.create_model`` (e.g. ``drop_rate``, ``in_chans``).

    Preprocessing is timm's own eval transform for the model (``resolve_data_config`` +
    ``create_transform``), so results equal calling timm directly. Input: a path, bytes, PIL
    image or an RGB array (as from ``image_decode``). Output: a float32 vector.
    """

    reads_files = True  # a path input is opened here

    batchable = True
    default_batch_size = 16

    @classmethod
    def weights_identity(cls, params: dict[str, Any]) -> str | None:
        """The checkpoint file, or the pretrained weights ``model_name`` resolves to offline;
        None for random weights (``pretrained=False``): reused in one process only."""
        if params.get("checkpoint_path"):
            return files_identity(params["checkpoint_path"])
        return files_identity(params["model_name"]) if params.get("pretrained", True) else None

    def __init__(
        self,
        model_name: str,
        pretrained: bool = True,
        checkpoint_path: str | None = None,
        channels_last: bool | None = None,
        layer: str | int | None = None,
        pool: str = "avg",
        backend: str = "auto",
        decode: str = "auto",
        **create_kwargs: Any,
    ):
        import timm

        if not isinstance(model_name, str) or not timm.is_model(model_name.split(".")[0]):
            hint = did_you_mean(str(model_name), timm.list_models())
            msg = f"image_embedding.timm: model_name={model_name!r} is not a timm model.{hint} See timm.list_models('pattern*') for the names."
            raise ValueError(msg)
        self.model_name = model_name
        self.pretrained = bool(pretrained)
        self.checkpoint_path = checkpoint_path
        self.channels_last = channels_last
        if pool not in POOLS:
            msg = f"image_embedding.timm: pool={pool!r} is not one of {', '.join(POOLS)}"
            raise ValueError(msg)
        self.layer, self.pool = layer, pool
        self.backend = check_backend("image_embedding.timm", backend)
        if decode not in DECODES:
            msg = f"image_embedding.timm: decode={decode!r} is not one of {', '.join(map(repr, DECODES))}"
            raise ValueError(msg)
        self.decode = decode
        if backend == "onnx" and layer is not None:
            msg = "image_embedding.timm: layer= needs backend='torch' (the ONNX export holds the pooled features only)"
            raise ValueError(msg)
        self.create_kwargs = create_kwargs
        if create_kwargs:
            self._check_create_kwargs()
        self.placement: Placement | None = None

    def _check_create_kwargs(self) -> None:
        """Build the model on the meta device (no memory, no weights) so that a keyword
        ``timm.create_model`` does not take fails now, not after the data is read."""
        import timm
        import torch

        try:
            with torch.device("meta"):
                timm.create_model(self.model_name, pretrained=False, **self.create_kwargs)
        except TypeError as exc:
            bad = next((k for k in self.create_kwargs if repr(k) in str(exc) or k in str(exc)), sorted(self.create_kwargs)[0])
            msg = (
                f"image_embedding.timm(): unexpected parameter {bad!r} ({exc}). Valid parameters: model_name, pretrained, "
                f"checkpoint_path, channels_last, layer, pool, and the keywords timm.create_model takes for {self.model_name!r}"
            )
            raise ValueError(msg) from exc

    def place(self, placement: Placement) -> None:
        """The engine's choices for this replica: the threads of an ONNX Runtime session."""
        self.placement = placement

    def setup(self, device: str) -> None:
        import timm
        import torch
        from timm.data import resolve_data_config

        hub, checkpoint = self._weights()
        try:
            model = timm.create_model(self.model_name, pretrained=hub, **self.create_kwargs)
        except Exception as exc:
            if not hub:
                raise
            served = ", ".join(served_models()) or "none"
            msg = (
                f"image_embedding.timm: no pretrained weights for {self.model_name!r} could be "
                f"loaded ({type(exc).__name__}). Installed model packages serve: {served}. Pass "
                "pretrained=False for random weights or checkpoint_path=... for your own file."
            )
            raise OSError(msg) from exc
        if checkpoint is not None:
            timm.models.load_checkpoint(model, str(checkpoint), weights_only=True, strict=not self._head_changed(model))
        if self.channels_last is None:
            self.channels_last = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.to(device).eval()
        self._transforms(resolve_data_config({}, model=model), device)
        mean, std = self.uint8[1:] if self.uint8 is not None else (tuple(self.config["mean"]), tuple(self.config["std"]))
        self.scale = pixel_scale(mean, std, device)  # made once, on the device: forward lifts no host data
        self.weights_dtype: Any = None  # set by cast_weights
        if self.layer is not None:
            self.catch = LayerCatcher(self.model, self.layer)
        measured = any(self.model_name.startswith(family) for family in ONNX_MEASURED)
        self.backend_used = "torch" if self.layer is not None else choose_backend(self.backend, device, measured)
        if self.backend_used == "onnx":
            self.session = self._onnx_session(self.config["input_size"], checkpoint)
            if self.session is None:  # a short run (the export would not pay off), or no writable cache
                self.backend_used = "torch"
        # pixels in, vectors out, nothing read back to the CPU: the engine may replay the model from
        # CUDA graphs (images decoded on the device arrive as pixels: prepare_on_device runs before)
        self.cuda_graphs = self.backend_used == "torch"

    def _weights(self) -> tuple[bool, Any]:
        """(ask the hub?, a local checkpoint) for the weights: the given file, an installed model
        package, or — when the hub cannot be reached — timm's files in the Hugging Face cache;
        offline and found nowhere, one line at once (embedflow.models.locate_model)."""
        import timm

        if self.checkpoint_path is not None or not self.pretrained:
            return False, self.checkpoint_path
        local = resolve_model(self.model_name)
        if local != self.model_name:
            return False, local
        config = timm.models.get_pretrained_cfg(self.model_name)
        hub_id = getattr(config, "hf_hub_id", None)
        own = "pass pretrained=False for random weights or checkpoint_path=... for your own file"
        source = locate_model(self.model_name, "image_embedding.timm", hub_id=hub_id, other_fix=own)
        if source == self.model_name:
            return True, None
        files = [Path(source) / name for name in ("model.safetensors", "pytorch_model.bin")]
        return False, next((f for f in files if f.is_file()), files[0])

    def setup_preprocess(self, device: str) -> None:
        """Only what ``preprocess`` needs — the model's transform, from an architecture built on
        the meta device (no weights, no memory) — for a process that never runs ``forward``
        (Ray's CPU tasks feeding a GPU actor)."""
        import timm
        import torch
        from timm.data import resolve_data_config

        with torch.device("meta"):
            model = timm.create_model(self.model_name, pretrained=False, **self.create_kwargs)
        self._transforms(resolve_data_config({}, model=model), device)

    def _transforms(self, config: dict[str, Any], device: str) -> None:
        from timm.data import create_transform

        self.transform = create_transform(**config)
        self.config, self.device = config, device
        # a path or bytes decode to at most 8x the model's input side: a 12000-pixel scan is not
        # held in full through the transform (the model sees 224 pixels; samples stay exact)
        self.decode_side = DECODE_SIDE_PER_INPUT * max(config["input_size"][1:])
        self.on_device = self.decode == "device" or (self.decode == "auto" and device.startswith("cuda"))
        # decoded on the CPU: resized and cropped there, kept uint8 until the device normalises the batch
        self.uint8 = None if self.on_device else split_transform(self.transform)

    def _onnx_session(self, input_size: tuple[int, ...], checkpoint: Any) -> Any:
        """The model's pooled features exported to ONNX (once; cached), opened with ONNX Runtime."""
        import torch

        weights = files_of(checkpoint) if checkpoint is not None else ("random", self.pretrained)
        key = cache_key(kind="timm", model=self.model_name, weights=weights, options=self.create_kwargs, size=list(input_size))
        if export_declined(self.backend, key, self.model_name):
            return None
        features = _features_module()(self.model.to(memory_format=torch.contiguous_format)).eval()
        example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))

        def export(path: Any) -> None:
            export_module(features, (example,), path, ["pixels"], {"pixels": {0: "batch"}})

        def verify(path: Any) -> None:
            with torch.no_grad():
                check_export(path, {"pixels": example.numpy()}, features(example).numpy(), self.model_name)

        if checkpoint is None and not self.pretrained:  # random weights change every time: nothing to cache
            key = cache_key(
                kind="timm-random", model=self.model_name, seed=torch.initial_seed(), tensor=float(next(self.model.parameters()).detach().sum())
            )
        path = exported(key, self.model_name, export, verify, fallback=self.backend == "auto")
        if path is None:  # auto, and the cache cannot be written: torch
            return None
        self.model = None  # ONNX Runtime holds the weights now
        self.channels_last = False
        return Session(path, self.placement.threads if self.placement and self.placement.threads else torch.get_num_threads())

    def cast_weights(self, dtype: Any) -> bool:
        """fp16/bf16 weights, cast once (the engine then runs no autocast); not for ONNX Runtime."""
        if self.backend_used == "onnx":
            return False
        self.model.to(dtype)
        self.weights_dtype = dtype
        return True

    def _head_changed(self, model: Any) -> bool:
        """A checkpoint's classifier may not fit when num_classes was changed; features still do."""
        return "num_classes" in self.create_kwargs

    def preprocess(self, image: Any) -> Any:
        if self.on_device:
            return read_encoded(image)  # bytes only: decoded on the device with the batch
        from PIL import Image

        if not isinstance(image, Image.Image) or image.mode != "RGB":
            image = Image.fromarray(decode_image(image, self.decode_side))
        if self.uint8 is not None:
            return np.asarray(self.uint8[0](image))  # HWC uint8, resized and cropped
        return self.transform(image)

    def collate(self, items: list[Any]) -> Any:
        import torch

        if self.on_device:
            return Encoded(items)
        if self.uint8 is not None:
            return torch.from_numpy(np.stack(items))  # NHWC uint8: normalised on the device
        batch = torch.stack(items)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def prepare_on_device(self, batch: Any) -> Any:
        """A batch of still encoded images (``decode="device"``) decoded, resized, cropped and
        normalised on the device; other batches as they are. The engine runs this in a thread
        and on a stream of its own, so ``forward`` takes pixels (and CUDA graphs can hold it)."""
        import torch

        if not isinstance(batch, Encoded):
            return batch
        pixels = to_pixels(decode_on(batch.items, self.device), self.config, self.scale)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels.cpu() if self.backend_used == "onnx" else pixels

    def forward(self, batch: Any) -> Any:
        import torch

        if isinstance(batch, Encoded):  # called directly, not through the engine
            batch = self.prepare_on_device(batch)
        elif self.uint8 is not None and batch.dtype == torch.uint8:
            batch = normalize_batch(batch, *self.scale)  # NHWC in memory: channels-last already
            if not self.channels_last:
                batch = batch.contiguous()
        if self.weights_dtype is not None:
            batch = batch.to(self.weights_dtype)
        if self.backend_used == "onnx":
            return torch.from_numpy(self.session({"pixels": np.ascontiguousarray(batch.numpy())})[0])
        if self.layer is not None:
            return pool_output(self.catch(batch), self.pool)
        return self.model.forward_head(self.model.forward_features(batch), pre_logits=True)

    def postprocess(self, output: Any) -> list[np.ndarray]:
        return list(output.float().numpy())


@functools.cache
def _features_module() -> type:
    """A module returning a timm model's pooled pre-logits features (defined once torch is imported)."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self, model: Any):
            super().__init__()
            self.model = model

        def forward(self, pixels: Any) -> Any:
            return self.model.forward_head(self.model.forward_features(pixels), pre_logits=True)

    return Features
