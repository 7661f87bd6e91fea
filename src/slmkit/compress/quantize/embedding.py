"""Quantize a model's input embedding table (`embed_bits`) to `slmkit.runtime.embedding.QuantEmbedding`
(RTN: the table has no calibration signal worth a search; grids in that module)."""

from __future__ import annotations

import torch
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.runtime.embedding import QuantEmbedding, embed_grid
from slmkit.runtime.qweight import rtn


def quantize_embeddings(model, bits: int, simulate: bool = False) -> nn.Module:
    """Quantize `model`'s input embedding table in place (RTN, see the module docstring) and
    return the new module. A head tied to it is untied first and keeps the exact float weights.
    `simulate`: keep the nn.Embedding, holding the dequantized values."""
    emb = model.get_input_embeddings()
    if emb is None or not isinstance(emb, nn.Embedding):
        raise SlmkitError(f"{type(model).__name__} has no nn.Embedding input table to quantize (embed_bits)")
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is emb.weight:
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        for c in {id(model.config): model.config, id(model.config.get_text_config()):
                  model.config.get_text_config()}.values():
            c.tie_word_embeddings = False
    name = next(n for n, m in model.named_modules() if m is emb)
    group, symmetric = embed_grid(bits, emb.embedding_dim)
    qw = rtn(emb.weight.detach(), bits, group, symmetric)
    if simulate:
        with torch.no_grad():
            emb.weight.copy_(qw.dequantize().to(emb.weight.dtype))
        return emb
    qemb = QuantEmbedding(qw, emb)
    model.set_submodule(name, qemb)
    return qemb
