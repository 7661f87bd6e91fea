"""Few-token float32 linears on CPU: `with narrow_linears(model): model(...)`.

A forward over 2-16 tokens (speculative verification of k drafts, a decode step of a small
batch) is a matrix product whose token dimension is tiny. PyTorch's CPU `linear` sends it to a
GEMM that packs the weight matrix on every call, so on an AVX2 CPU a 5-token forward of a
float32 model costs about 3 single-token forwards (Qwen2.5-1.5B: 516 ms for 1 token, 1073 ms for
2, 1580 ms for 5; benchmarks/narrow_matmul.py). Written the other way round, weight @ x^T, the
same product runs at near matrix-vector speed: the weight is read once, unpacked (a 151,936 x
1536 head over 5 tokens: 294 -> 105 ms; an 8960 x 1536 MLP matrix: 16.6 -> 4.6 ms).

Only float32 weights gain: bf16 products on AVX2 scale with the token count either way (and
are not touched). Small matrices (under 2^22 weights) gain nothing and are left alone, as are
single tokens (matrix-vector already) and anything over `max_tokens`.

The switch is scoped: it sets an instance `forward` on each eligible `nn.Linear` for the
duration of the block and removes it after, so the model object is unchanged outside it (and
modules that already carry an instance `forward`, e.g. accelerate's hooks, are skipped).
"""

from __future__ import annotations

import contextlib
import types
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_WEIGHTS = 1 << 22     # below this the transposed product is no faster (1536 x 1536: equal)
MAX_TOKENS = 16           # above this the packed GEMM catches up


def _narrow_forward(self: "nn.Linear", x: "torch.Tensor") -> "torch.Tensor":
    import torch
    import torch.nn.functional as F

    n = x.numel() // x.shape[-1] if x.dim() > 0 and x.shape[-1] else 0
    if not (2 <= n <= self._slmkit_narrow_max and x.dtype == torch.float32):
        return F.linear(x, self.weight, self.bias)
    y = torch.mm(self.weight, x.reshape(n, x.shape[-1]).T).T          # [n, out]
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], y.shape[-1])


def eligible(module: "nn.Module", min_weights: int = MIN_WEIGHTS) -> bool:
    """A plain float32 CPU nn.Linear with at least min_weights weights and no instance forward."""
    import torch

    return (type(module) is torch.nn.Linear and "forward" not in module.__dict__
            and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu"
            and module.weight.numel() >= min_weights)


@contextlib.contextmanager
def narrow_linears(model: "nn.Module", max_tokens: int = MAX_TOKENS,
                   min_weights: int = MIN_WEIGHTS) -> Iterator[int]:
    """Within the block, eligible linears of `model` compute 2..max_tokens-token inputs as
    weight @ x^T. Yields how many linears were switched (0 for a bf16 or quantized model)."""
    mods = [m for m in model.modules() if eligible(m, min_weights)]
    for m in mods:
        m.forward = types.MethodType(_narrow_forward, m)
        m._slmkit_narrow_max = max_tokens
    try:
        yield len(mods)
    finally:
        for m in mods:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_slmkit_narrow_max", None)
