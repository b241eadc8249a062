"""Long texts in parts that fit a model: windows of the model's own tokens, with overlap, cut at
token boundaries of the original text (the offsets the fast tokenizer gives), so each part is a
piece of the text itself. ``DataCollection.chunk`` uses it; ``group`` joins the parts back.

>>> chunks = TokenChunks("sentence-transformers/all-MiniLM-L6-v2", max_tokens=4, overlap=1)
>>> chunks("one two three four five six seven")
[('one two three four', 0), ('four five six seven', 1)]
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..models import locate_model, quiet_loading


class TokenChunks:
    """``text -> [(part, index), ...]``: windows of ``max_tokens`` tokens of ``model_name``'s
    tokenizer, each starting ``max_tokens - overlap`` tokens after the one before. Default
    ``max_tokens``: the model's limit less its special tokens (254 for MiniLM's 256). An empty
    text is one empty part (no row disappears)."""

    def __init__(self, model_name: str, max_tokens: int | None = None, overlap: int = 0):
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            msg = f"chunk: max_tokens={max_tokens!r} must be a positive integer (tokens per part)"
            raise ParameterError(msg)
        if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0 or (max_tokens is not None and overlap >= max_tokens):
            msg = f"chunk: overlap={overlap!r} must be an integer from 0 to max_tokens - 1"
            raise ParameterError(msg)
        self.model_name, self.max_tokens, self.overlap = model_name, max_tokens, overlap
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        size = f", max_tokens={self.max_tokens}" if self.max_tokens else ""
        return f"chunk({self.model_name!r}{size}, overlap={self.overlap})"

    def __getstate__(self) -> dict[str, Any]:  # sent to Ray workers without the loaded tokenizer
        return {"model_name": self.model_name, "max_tokens": self.max_tokens, "overlap": self.overlap}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, **state)

    def _load(self) -> tuple[Any, int]:
        with self._lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                source = locate_model(self.model_name, "chunk")
                with quiet_loading():
                    tokenizer = AutoTokenizer.from_pretrained(str(source))
                if not tokenizer.is_fast:
                    msg = f"chunk: {self.model_name!r} has no fast tokenizer (needed for the offsets of each token)"
                    raise ParameterError(msg)
                limit = self.max_tokens or _model_limit(Path(str(source)), tokenizer) - tokenizer.num_special_tokens_to_add()
                if self.overlap >= limit:
                    msg = f"chunk: overlap={self.overlap} must be smaller than max_tokens ({limit})"
                    raise ParameterError(msg)
                self._tokenizer, self._limit = tokenizer, limit
            return self._tokenizer, self._limit

    def __call__(self, text: Any) -> list[tuple[str, int]]:
        if not isinstance(text, str):
            msg = f"chunk expects a str, got {type(text).__name__}: {text!r:.60}"
            raise TypeError(msg)
        tokenizer, limit = self._load()
        # verbose=False: a text longer than the model's limit is what chunk is for, not a warning
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        if not offsets:
            return [(text, 0)]
        step, start = limit - self.overlap, 0
        parts: list[tuple[str, int]] = []
        while True:
            end = min(start + limit, len(offsets))
            parts.append((text[offsets[start][0] : offsets[end - 1][1]], len(parts)))
            if end == len(offsets):
                return parts
            start += step


def _model_limit(folder: Path, tokenizer: Any) -> int:
    """The model's length limit in tokens: sentence-transformers' ``max_seq_length`` where the
    folder has one, else the tokenizer's (at most 512)."""
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        limit = json.loads(config.read_text()).get("max_seq_length")
        if limit:
            return int(limit)
    return int(min(tokenizer.model_max_length or 512, 512))


class TextsOnly:
    """A chunker's parts without their indexes (one output column, or unnamed rows)."""

    def __init__(self, chunks: TokenChunks):
        self.chunks = chunks

    def __repr__(self) -> str:
        return repr(self.chunks)

    def __call__(self, text: Any) -> list[str]:
        return [part for part, _index in self.chunks(text)]
