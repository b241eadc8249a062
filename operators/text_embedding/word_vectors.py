"""``word_embedding.transformers``: a model's raw input-embedding rows for each token.

These are the vectors the network starts from (GPT-2's "raw embedding vectors"), before any
layer mixes in context.

>>> import embedflow as ef
>>> vecs, tokens = ef.dc(["crocodile"]).word_embedding.transformers(
...     model_name="sentence-transformers/all-MiniLM-L6-v2").to_list()[0]
>>> vecs.shape[1], tokens[0]
(384, 'crocodile')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedflow import Operator
from embedflow.models import files_identity, locate_model, quiet_loading


class WordEmbedding(Operator):
    """Look up each token of a text in the model's input-embedding matrix.

    Parameters:
        model_name: a hub id or folder (installed model packages serve their names offline).
        special_tokens: keep ``[CLS]``/``[SEP]``-style tokens (default False).

    Output: ``(matrix, tokens)``: a float32 array with one row per token, and the tokens.
    """

    threaded = False

    @classmethod
    def weights_identity(cls, params: dict[str, Any]) -> str | None:
        """The model files ``model_name`` resolves to (for incremental runs)."""
        return files_identity(params["model_name"])

    def __init__(self, model_name: str, special_tokens: bool = False):
        self.model_name = model_name
        self.special_tokens = bool(special_tokens)

    def setup(self, device: str) -> None:
        source = locate_model(self.model_name, "word_embedding.transformers")  # first: offline, fail before the slow import
        from transformers import AutoModel, AutoTokenizer

        with quiet_loading():
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
        self.table = model.get_input_embeddings().weight.detach().float().cpu().numpy()

    def preprocess(self, text: Any) -> tuple[np.ndarray, list[str]]:
        if not isinstance(text, str):
            msg = f"word_embedding.transformers expects a str, got {type(text).__name__}"
            raise TypeError(msg)
        ids = self.tokenizer(text, add_special_tokens=self.special_tokens)["input_ids"]
        return self.table[ids].copy(), self.tokenizer.convert_ids_to_tokens(ids)
