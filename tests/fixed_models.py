"""Tiny models whose outputs a test can work out by hand."""

from __future__ import annotations

import torch

from slmkit.models.tiny import tiny_model


def biased_model(bias: dict[int, float]):
    """A tiny llama whose next-token logits are exactly `bias` (other tokens 0), whatever the context."""
    model = tiny_model("llama")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for tok, b in bias.items():
            head.bias[tok] = b
    model.lm_head = head
    return model
