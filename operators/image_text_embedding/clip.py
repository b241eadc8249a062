"""``image_text_embedding.clip``: images and texts in one vector space with transformers' CLIP.

One step embeds one modality: ``modality="image"`` gives ``model.get_image_features`` of an
image (any input ``image_decode`` takes), ``modality="text"`` gives ``get_text_features`` of a
string — the projected vectors that CLIP compares, so a text query finds photos.

>>> ClipEmbedding(model_name="openai/clip-vit-base-patch32", modality="text")
ClipEmbedding(model_name='openai/clip-vit-base-patch32', modality='text')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedflow import Operator
from embedflow.models import files_identity, locate_model, quiet_loading

from ..image_decode import decode_image

MODALITIES = ("image", "text")


class ClipEmbedding(Operator):
    """Embed images or texts with a CLIP model (transformers' ``CLIPModel``).

    Parameters:
        model_name: a hub id (``openai/clip-vit-base-patch32``) or a folder holding the model,
            its tokenizer and its image processor (``save_pretrained``).
        modality: ``"image"`` (images in) or ``"text"`` (strings in); both land in one space.
        max_length: the longest text in tokens (default: the model's, 77 for OpenAI's CLIP);
            longer texts are cut.
        trust_remote_code: as transformers' option (off by default).

    Each result is a float32 vector of the model's projection size, not normalised: add
    ``.normalize()`` for cosine similarity.
    """

    batchable = True
    default_batch_size = 32
    reads_files = True  # modality="image": a path input is opened here (a server accepts it only under its files root)

    @classmethod
    def weights_identity(cls, params: dict[str, Any]) -> str | None:
        """The model files ``model_name`` resolves to (for incremental runs)."""
        return files_identity(params["model_name"])

    @classmethod
    def opens_files(cls, params: dict[str, Any]) -> bool:
        return params.get("modality", "image") == "image"

    def __init__(self, model_name: str, modality: str = "image", max_length: int | None = None, trust_remote_code: bool = False):
        if not isinstance(model_name, str) or not model_name:
            msg = f"image_text_embedding.clip: model_name={model_name!r} must be a hub id or a folder path"
            raise ValueError(msg)
        if modality not in MODALITIES:
            msg = f"image_text_embedding.clip: modality={modality!r} is not one of 'image', 'text'"
            raise ValueError(msg)
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1):
            msg = f"image_text_embedding.clip: max_length={max_length!r} must be a positive integer"
            raise ValueError(msg)
        self.model_name, self.modality, self.max_length = model_name, modality, max_length
        self.trust_remote_code = bool(trust_remote_code)

    def setup(self, device: str) -> None:
        source = locate_model(self.model_name, "image_text_embedding.clip")  # first: offline, fail before the slow import
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        options = {"trust_remote_code": self.trust_remote_code}
        try:
            with quiet_loading():
                self.model = AutoModel.from_pretrained(source, **options).to(device).eval()
                if self.modality == "image":
                    self.processor = AutoImageProcessor.from_pretrained(source, **options)
                else:
                    self.tokenizer = AutoTokenizer.from_pretrained(source, **options)
        except OSError as exc:  # transformers' own message runs over several lines
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            msg = f"image_text_embedding.clip: cannot load model {self.model_name!r} from {source!r}: {first}. Fix: give a folder with a CLIP model's files, or check the name"
            raise OSError(msg) from exc
        self.weights_dtype: Any = None  # set by cast_weights
        if self.modality == "text":
            limit = getattr(self.model.config.text_config, "max_position_embeddings", 77)
            self.limit = min(self.max_length or limit, limit)
            self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)

    def cast_weights(self, dtype: Any) -> bool:
        """fp16/bf16 weights, cast once (the engine then runs no autocast)."""
        self.model.to(dtype)
        self.weights_dtype = dtype
        return True

    def preprocess(self, item: Any) -> Any:
        if self.modality == "image":
            pixels = self.processor(images=decode_image(item), return_tensors="pt")["pixel_values"]
            return pixels[0]
        if not isinstance(item, str):
            msg = f"image_text_embedding.clip(modality='text') expects a str, got {type(item).__name__}: {item!r:.60}"
            raise TypeError(msg)
        return self.tokenizer(item, truncation=True, max_length=self.limit)["input_ids"]

    def sort_key(self, item: Any) -> int:
        return len(item) if self.modality == "text" else 0

    def collate(self, items: list[Any]) -> Any:
        import torch

        if self.modality == "image":
            return torch.stack(items)
        width = max(len(ids) for ids in items)
        ids = torch.tensor([ids + [self.pad_id] * (width - len(ids)) for ids in items], dtype=torch.long)
        mask = torch.tensor([[1] * len(ids_) + [0] * (width - len(ids_)) for ids_ in items], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, batch: Any) -> Any:
        if self.modality == "image":
            out = self.model.get_image_features(pixel_values=batch if self.weights_dtype is None else batch.to(self.weights_dtype))
        else:
            out = self.model.get_text_features(**batch)
        return getattr(out, "pooler_output", out)  # transformers 5 returns an output object, 4 a tensor

    def postprocess(self, output: Any) -> list[np.ndarray]:
        return list(output.float().numpy())
