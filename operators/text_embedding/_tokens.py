"""Texts to token ids, and token ids to padded batches, for ``text_embedding.transformers``.

A prepared text is ``{"input_ids": ids, "token_type_ids": types}`` (lists or int arrays; no
attention mask: every token of an unpadded text is real, so :meth:`Tokens.collate` builds the
mask from the lengths). Texts are tokenized by a private copy of the fast (Rust) tokenizer
(the engine may run :meth:`Tokens.many` in worker processes: the operator's
``preprocess_processes``); texts cut to the length limit are counted in ``counts["truncated"]``.
The tokenizer sees at most ``CHARS_PER_TOKEN`` characters per token of the limit, cut at the
last whitespace before that (a 200 MB line costs a slice, not gigabytes of token ids, and the
tokens kept are those of the whole text: no text of words needs 64 characters a token).

>>> from tokenizers import Tokenizer, models, pre_tokenizers
>>> fast = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
>>> fast.pre_tokenizer = pre_tokenizers.Whitespace()
>>> tokens = Tokens(fast, limit=8, input_names=["input_ids", "attention_mask"], pad_id=0)
>>> batch = tokens.collate(tokens.many(["a b a", "b"]))
>>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
([[1, 2, 1], [2, 0, 0]], [[1, 1, 1], [1, 0, 0]])
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Any

import numpy as np

CHARS_PER_TOKEN = 64  # characters the tokenizer sees per token of the limit (see the module docstring)
_SPACES = " \n\t\r"


class Tokens:
    """The tokenization of one model step (see the module docstring).

    ``fast``: a ``tokenizers.Tokenizer`` (or None: the slow ``tokenizer`` is used, under a
    lock); ``limit``: tokens kept per text; ``bucketed``: pad widths to :func:`bucket_width`
    (on a GPU: few shapes for CUDA graphs, multiples of 8 for tensor cores); ``counts``: where cut texts are counted (the
    operator's ``run_counts``).
    """

    def __init__(
        self,
        fast: Any,
        limit: int,
        input_names: list[str],
        pad_id: int,
        prompt: str | None = None,
        bucketed: bool = False,
        tokenizer: Any = None,
        counts: Counter[str] | None = None,
    ):
        self.limit, self.prompt, self.pad_id, self.bucketed = limit, prompt, pad_id, bucketed
        self.max_chars = limit * CHARS_PER_TOKEN
        self.with_types = "token_type_ids" in input_names
        self.tokenizer = tokenizer
        self.fast = None
        self.carry_types = self.with_types  # whether items hold their type ids (else collate writes zeros)
        if fast is not None:  # a copy configured once (truncate, never pad): safe to share between threads
            from tokenizers import Tokenizer

            self.fast = Tokenizer.from_str(fast.to_str())
            self.fast.no_padding()
            self.fast.enable_truncation(limit)
            # one text's type ids come from the post-processor's template, not from the words:
            # all zeros for one text (BERT) means all zeros for every text — not worth a list each
            self.carry_types = self.with_types and any(self.fast.encode((prompt or "") + "a probe, of types").type_ids)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter() if counts is None else counts

    # ---- tokenize ----------------------------------------------------------------------------
    def one(self, text: Any) -> dict[str, Any]:
        """One text's token ids (a TypeError naming the value for a non-string)."""
        if not isinstance(text, str):
            msg = f"text_embedding.transformers expects a str, got {type(text).__name__}: {text!r:.60}"
            raise TypeError(msg)
        if self.prompt:
            text = self.prompt + text
        text, cut = self._bounded(text)
        if self.fast is not None:
            enc = self.fast.encode(text)
            self._count(1 if enc.overflowing or cut else 0)
            return self._item(enc.ids, enc.type_ids)
        with self._lock:  # slow tokenizers are not thread-safe
            enc = self.tokenizer(text, truncation=True, max_length=self.limit, return_overflowing_tokens=False)
            self.counts["truncated"] += int(cut or len(enc["input_ids"]) >= self.limit)  # at the limit: (almost always) cut
        return self._item(list(enc["input_ids"]), list(enc.get("token_type_ids") or [0] * len(enc["input_ids"])))

    def many(self, texts: list[Any]) -> list[dict[str, Any]]:
        """Several texts at once, in one call of the Rust tokenizer; item by item for a slow
        tokenizer or a non-string."""
        if self.fast is None or not all(isinstance(t, str) for t in texts):
            return [self.one(t) for t in texts]
        if self.prompt:
            texts = [self.prompt + t for t in texts]
        bounded = [self._bounded(t) for t in texts]
        encodings = self.fast.encode_batch([t for t, _ in bounded])
        self._count(sum(1 for enc, (_, cut) in zip(encodings, bounded) if enc.overflowing or cut))
        if not self.carry_types:
            return [{"input_ids": enc.ids} for enc in encodings]
        return [{"input_ids": enc.ids, "token_type_ids": enc.type_ids} for enc in encodings]

    def _bounded(self, text: str) -> tuple[str, bool]:
        """``text`` cut to at most ``max_chars`` characters at its last whitespace before that
        (mid-word only when there is none), and whether it was cut.

        >>> text, cut = Tokens(None, limit=1, input_names=["input_ids"], pad_id=0)._bounded("word " * 20)
        >>> len(text), text.split() == ["word"] * 13, cut  # 64 characters at most, whole words
        (64, True, True)
        """
        if len(text) <= self.max_chars:
            return text, False
        end = max(text.rfind(space, 0, self.max_chars + 1) for space in _SPACES)
        return text[: end if end > 0 else self.max_chars], True

    def _item(self, ids: Any, types: Any) -> dict[str, Any]:
        return {"input_ids": ids, "token_type_ids": types} if self.carry_types else {"input_ids": ids}

    # ---- batches -----------------------------------------------------------------------------
    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad to the longest item (its :meth:`padded` width), always on the right:
        position ids then stay those of an unpadded text for decoders too (left padding would
        shift GPT-2's positions). Built in numpy arrays, not lists."""
        import torch

        lengths = np.fromiter((len(it["input_ids"]) for it in items), np.int64, len(items))
        width = self.padded(int(lengths.max()))
        mask = np.arange(width) < lengths[:, None]
        batch = {}
        for key in items[0]:
            rows = np.full((len(items), width), self.pad_id if key == "input_ids" else 0, dtype=np.int64)
            rows[mask] = _flat([it[key] for it in items], int(lengths.sum()))  # row by row, left-aligned
            batch[key] = torch.from_numpy(rows)
        if self.with_types and "token_type_ids" not in batch:
            batch["token_type_ids"] = torch.zeros((len(items), width), dtype=torch.int64)
        batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        return batch

    def padded(self, longest: int) -> int:
        """The width a batch whose longest text has ``longest`` tokens is padded to: that
        length, or with ``bucketed`` its :func:`bucket_width` (never past the limit)."""
        return min(bucket_width(longest), max(self.limit, longest)) if self.bucketed else longest

    # ---- bookkeeping -------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        if n:
            with self._lock:
                self.counts["truncated"] += n

    def take_truncated(self) -> int:
        """Texts cut to the limit since the last call."""
        with self._lock:
            return self.counts.pop("truncated", 0)


def bucket_width(tokens: int) -> int:
    """The padded width of a batch whose longest text has ``tokens`` tokens: 16, then in each
    octave ``(p, 2p]`` the first of ``1.25p``, ``1.5p``, ``2p`` (rounded up to a multiple of 8)
    that holds it — 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512 ... Twelve
    shapes up to 256 tokens: over the GPU check's 50,000 sentences (MiniLM's tokenizer, windows
    of 8,192) 12 batch shapes and 1.20 padded tokens per real one, against 67 shapes and 1.54 for
    multiples of 8 in windows of 1,024 (benchmarks/bench_shapes.py).

    >>> [bucket_width(n) for n in (1, 16, 17, 25, 33, 41, 49, 65, 129, 200, 257)]
    [16, 16, 24, 32, 40, 48, 64, 80, 160, 256, 320]
    """
    if tokens <= 16:
        return 16
    octave = 1 << ((tokens - 1).bit_length() - 1)  # the power of two p with p < tokens <= 2p
    for step in (octave * 5 // 4, octave * 3 // 2, octave * 2):
        width = -(-step // 8) * 8
        if tokens <= width:
            return width
    return octave * 2


def _flat(sequences: list[Any], total: int) -> np.ndarray:
    """The sequences (lists or arrays of ints) one after the other in one int64 array."""
    if isinstance(sequences[0], np.ndarray):
        return np.concatenate(sequences)
    return np.fromiter(itertools.chain.from_iterable(sequences), np.int64, total)
