"""Few-token linears on CPU: `with narrow_linears(model): model(...)`.

A forward over 2-16 tokens (speculative verification of k drafts, a decode step of a small
batch) is a matrix product whose token dimension is tiny. PyTorch's CPU `linear` sends it to a
GEMM that packs the weight matrix on every call, so on an AVX2 CPU a 5-token forward of a
float32 model costs about 3 single-token forwards (Qwen2.5-1.5B: 516 ms for 1 token, 1073 ms for
2, 1580 ms for 5). Reading each weight once and using it for every token is what such a step
needs, since it is bound by memory, not arithmetic:

* slmkit's AVX2 kernel (`dense_gemm` in slmkit/runtime/int4_native.c, built on first
  use; see native.py) does exactly that, for float32 weights (1-16 tokens: a one-token
  Qwen2.5-1.5B step also drops from ~543 to ~400 ms) and for bf16 weights (half the bytes,
  widened to float32 in registers; 2-16 tokens, since PyTorch's bf16 matrix-vector product is
  as fast for one) on CPUs without native bf16 instructions; with `avx512_bf16` PyTorch's bf16
  products barely grow with the token count (AMD EPYC with avx512_bf16, Qwen2.5-1.5B: 199 ms for
  1 token, 215 ms for 5) and are left to it. Passes of up to 6 tokens over pairs of weight rows
  (the float32 5-token step on that machine: 808 ms plain, 327 ms here, 226 ms for one token);
* without it, float32 weights go through torch.mm(weight, x^T), which PyTorch runs unpacked at
  near matrix-vector speed (a 151,936 x 1536 head over 5 tokens: 294 -> 105 ms; an 8960 x 1536
  MLP matrix: 16.6 -> 4.6 ms). bf16 products scale with the token count either way and are left
  to PyTorch.

Small matrices gain little and are left alone (under 2^16 weights with the native kernel, 2^22
with torch.mm), as is anything over `max_tokens` (prefill). Results equal nn.Linear's up to float32 summation order.

The switch is scoped: it sets an instance `forward` on each eligible `nn.Linear` for the
duration of the block and removes it after, so the model object is unchanged outside it (and
modules that already carry an instance `forward`, e.g. accelerate's hooks, are skipped).
"""

from __future__ import annotations

import contextlib
import types
from typing import TYPE_CHECKING, Iterator

from slmkit.errors import SlmkitError
from slmkit.runtime import native as native_kernel
from slmkit.runtime.cpu import has_native_bf16

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_WEIGHTS = 1 << 22     # torch.mm path: below this the transposed product is no faster
NATIVE_MIN_WEIGHTS = 1 << 16  # native kernel: worth it for every projection of a real model
MAX_TOKENS = 16           # above this the packed GEMM catches up


def _native():
    """slmkit's AVX2 kernel library (dense_gemm), or None (slmkit.runtime.native)."""
    return native_kernel.library()


def native_mm(lib, x: "torch.Tensor", weight: "torch.Tensor") -> "torch.Tensor":
    """x [n, in] (n <= 16) @ weight [out, in]^T with the native kernel; weight float32 or bf16,
    contiguous; -> float32 [n, out]."""
    import torch

    x = x.float().contiguous()
    y = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
    bits = 32 if weight.dtype == torch.float32 else 16
    rc = lib.dense_gemm(x.data_ptr(), x.shape[0], x.shape[1], weight.data_ptr(), bits,
                        weight.shape[0], y.data_ptr())
    if rc != 0:
        raise RuntimeError(f"dense_gemm failed ({rc}) for x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    return y


def _narrow_forward(self: "nn.Linear", x: "torch.Tensor") -> "torch.Tensor":
    import torch
    import torch.nn.functional as F

    n = x.numel() // x.shape[-1] if x.dim() > 0 and x.shape[-1] else 0
    # one token: the native kernel beats PyTorch's float32 matrix-vector product (Qwen2.5-1.5B
    # step 543 -> ~400 ms) but not its bf16 one (251 vs 286 ms)
    lo = 1 if self._slmkit_native is not None and self.weight.dtype == torch.float32 else 2
    if not (lo <= n <= self._slmkit_narrow_max and x.dtype in (torch.float32, self.weight.dtype)):
        return F.linear(x, self.weight, self.bias)
    if self._slmkit_native is not None:
        y = native_mm(self._slmkit_native, x.reshape(n, x.shape[-1]), self.weight)
    else:                               # float32 weight, so x is float32 too (checked above)
        y = torch.mm(self.weight, x.reshape(n, x.shape[-1]).T).T          # [n, out]
    if self.bias is not None:
        y = y + self.bias
    return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])


@contextlib.contextmanager
def narrow_linears(model: "nn.Module", max_tokens: int = MAX_TOKENS,
                   min_weights: int | None = None, native: bool | None = None,
                   bf16: bool | None = None) -> Iterator[int]:
    """Within the block, eligible linears of `model` compute few-token inputs (1..max_tokens with
    the native kernel, 2..max_tokens without) as weight @ x^T. native=None: use slmkit's AVX2
    kernel where it builds (float32 and bf16 weights), else torch.mm (float32 weights only).
    bf16=None: bf16 weights go through the kernel only on CPUs without native bf16 instructions
    (with avx512_bf16, PyTorch's own bf16 products are faster at every token count: Qwen2.5-1.5B,
    5 tokens 215 vs 247 ms, 8 tokens 230 vs 419 ms). Yields how many linears were switched."""
    import torch

    lib = _native() if native is not False else None
    if native and lib is None:
        raise SlmkitError(f"native few-token kernel requested but unavailable: {native_kernel.status()}")
    if min_weights is None:
        min_weights = NATIVE_MIN_WEIGHTS if lib is not None else MIN_WEIGHTS
    f32 = torch.float32
    if bf16 is None:
        bf16 = not has_native_bf16()
    dtypes = (f32, torch.bfloat16) if lib is not None and bf16 else (f32,)
    switched = []
    # this runs around every decode step: plain attribute reads and __dict__ writes only
    # (nn.Module.__getattr__/__setattr__ would cost milliseconds per step on a 30-layer model)
    for m in model.modules():
        if type(m) is not torch.nn.Linear or "forward" in m.__dict__:   # e.g. accelerate's hooks
            continue
        w = m._parameters["weight"]
        if w.dtype not in dtypes or w.device.type != "cpu" or w.numel() < min_weights:
            continue
        kernel = lib if lib is not None and w.is_contiguous() and w.shape[1] % 8 == 0 else None
        if kernel is None and w.dtype != f32:       # bf16 without the native kernel: no gain
            continue
        m.__dict__.update(forward=types.MethodType(_narrow_forward, m),
                          _slmkit_narrow_max=max_tokens, _slmkit_native=kernel)
        switched.append(m)
    try:
        yield len(switched)
    finally:
        for m in switched:
            for key in ("forward", "_slmkit_narrow_max", "_slmkit_native"):
                m.__dict__.pop(key, None)
