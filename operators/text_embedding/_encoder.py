"""The module a text step runs: a transformers model's hidden state, and the attention mask in
the form that keeps its forward free of reads back to the CPU (a CUDA graph can record it).

>>> import torch
>>> sdpa_mask(torch.tensor([[1, 1, 0]])).tolist()
[[[[True, True, False]]]]
"""

from __future__ import annotations

import functools
from typing import Any


def sdpa_mask(mask: Any) -> Any:
    """A ``(batch, tokens)`` padding mask as the ``(batch, 1, 1, tokens)`` boolean mask SDPA
    takes (True: attend), which transformers passes through unchecked."""
    return mask[:, None, None, :].bool()


@functools.cache
def hidden_states_module() -> type:
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
