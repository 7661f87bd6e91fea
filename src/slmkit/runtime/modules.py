"""Whole-model questions and surgery over the runtime modules: is a model quantized, what one
decode step reads, and back to dense float linears."""

from __future__ import annotations

import torch
from torch import nn

from slmkit.runtime.embedding import QuantEmbedding
from slmkit.runtime.kernels import QuantLinear


def is_quantized(model) -> bool:
    """Whether `model` holds integer-kernel modules (or simulated quantized weights)."""
    return bool(getattr(model, "_slmkit_quantized", None)) or any(
        isinstance(m, QuantLinear) for m in model.modules())


def decode_weight_bytes(model) -> tuple[int, int]:
    """What one decode step reads, by kind: (bytes of integer linear weights, number of dense
    float linear weights), the lm_head included and embedding lookups excluded (a lookup reads
    one row). The dtype policy compares the two (`slmkit.models.dtype`)."""

    int_bytes = dense = 0
    for m in model.modules():
        if isinstance(m, QuantLinear) and not isinstance(m, QuantEmbedding):
            int_bytes += m.out_features * m.in_features * m.bits // 8
        elif isinstance(m, nn.Linear):
            dense += m.weight.numel()
    return int_bytes, dense


def dequantize(model):
    """Replace every integer-kernel linear by a dense nn.Linear holding its exact dequantized
    weight (float32), in place; returns the model (e.g. to fine-tune it, or for LoRA)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantEmbedding):
            model.set_submodule(name, m.to_dense())
        elif isinstance(m, QuantLinear):
            dense = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                dense.weight.copy_(m.dense_weight())
                if m.bias is not None:
                    dense.bias.copy_(m.bias)
            model.set_submodule(name, dense)
    if hasattr(model, "config") and hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model._slmkit_quantized = None
    return model
