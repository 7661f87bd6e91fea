"""Quantized input embeddings: the token table as integer codes plus a grid.

A lookup only needs the rows of the tokens it reads, so the table is stored as uint8 codes and
each looked-up row is dequantized on the fly — no matmul, no dense copy. For a small model the
table is a large share of the bytes (SmolLM2-135M: 21% of the parameters; Gemma-3-270M: 63%),
which weight-only quantization of the linears never touches.

Grids (RTN, the table has no calibration signal worth a search):
  8 bits: one symmetric scale per token row ("channel");
  <= 4 bits: asymmetric groups of 32 columns along the embedding dimension (as GGUF's q4_0 /
  llama-quantize's token_embd), or per row when the width is not a multiple of 32.
Saved in compressed-tensors form (the same tensors as a quantized linear, targeted at the
embedding's module name), which compressed-tensors itself reads for `nn.Embedding`, so the
checkpoint still loads with plain `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import torch
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.runtime.kernels import QuantLinear
from slmkit.runtime.qweight import QuantizedWeight

EMBED_BITS = (4, 8)
EMBED_GROUP = 32


class QuantEmbedding(QuantLinear):
    """An embedding lookup over integer codes. It shares QuantLinear's grid part (`scale`,
    `zero`, `codes()`, `dense_weight()`) so checkpoints and `dequantize()` treat both alike;
    `out_features` is the vocabulary, `in_features` the embedding width. A multiplier the
    original module applied after the lookup (Gemma's `embed_scale`) is kept."""

    kernel = "gather + dequantize rows"

    def __init__(self, qw: QuantizedWeight, template: nn.Embedding):
        super().__init__(qw, None, qw.group_size)
        self.register_buffer("q", qw.q.contiguous(), persistent=False)
        self.padding_idx = template.padding_idx
        es = getattr(template, "embed_scale", None)
        self.embed_scale = None if es is None else torch.as_tensor(es).detach().float().clone()
        self.template_class = type(template)
        # follows model.to(dtype) / .half() / .float(): the lookup's output dtype
        self.register_buffer("dtype_probe", torch.zeros(0, dtype=template.weight.dtype), persistent=False)

    @property
    def num_embeddings(self) -> int:
        return self.out_features

    @property
    def embedding_dim(self) -> int:
        return self.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        g = self.g_idx()
        rows = self.q[ids].float()                                    # [..., dim]
        y = (rows - self.zero[ids][..., g]) * self.scale[ids][..., g]
        if self.embed_scale is not None:
            y = y * self.embed_scale
        return y.to(self.dtype_probe.dtype)

    def codes(self) -> torch.Tensor:
        return self.q

    def dense_weight(self) -> torch.Tensor:
        g = self.g_idx()
        return (self.q.float() - self.zero[:, g]) * self.scale[:, g]

    def to_dense(self) -> nn.Embedding:
        """A module of the original class holding the dequantized table."""
        cls = self.template_class
        try:
            dense = cls.__new__(cls)
            nn.Embedding.__init__(dense, self.out_features, self.in_features, padding_idx=self.padding_idx)
            if self.embed_scale is not None:
                dense.register_buffer("embed_scale", self.embed_scale.clone(), persistent=False)
        except Exception:  # pragma: no cover - a subclass with other invariants
            dense = nn.Embedding(self.out_features, self.in_features, padding_idx=self.padding_idx)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
        return dense


def embed_grid(bits: int, dim: int) -> tuple[int | None, bool]:
    """(group_size, symmetric) for an embedding of width `dim` at `bits`."""
    if bits not in EMBED_BITS:
        raise SlmkitError(f"embed_bits must be one of {EMBED_BITS} or None, not {bits!r}")
    if bits == 8:
        return None, True
    return (EMBED_GROUP if dim % EMBED_GROUP == 0 else None), False
