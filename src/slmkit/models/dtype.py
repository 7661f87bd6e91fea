"""Compute dtype per phase, chosen from the CPU's instruction set.

Measured on the two kinds of CPU this project runs on (benchmarks/dtype_phase.py):

* CPUs with native bf16 (`avx512_bf16` or `amx_bf16` flags): bf16 prefill is ~3x faster than
  fp32 and decode about equal -> bf16 for both phases.
* AVX2-only CPUs: bf16 decode (one token at a time, memory bound) is ~1.8x faster, but bf16
  prefill (long matmuls, emulated bf16) is ~6x *slower* than fp32 -> fp32 for prefill-like work
  (scoring, perplexity, calibration) and bf16 for token-by-token decoding — of float weights.
  A model whose linears are integer-quantized reads int4/int8 weights whatever the activation
  dtype, so bf16 buys nothing there and its emulated elementwise ops cost: fp32 decode
  (SmolLM2-135M pruned + int4 + int8 head, measured: 45 tok/s in fp32 vs 40 in bf16) -- unless
  dense float linears remain that would be most of what a float32 step reads (an int4 model
  whose large lm_head stays dense: Qwen2.5-0.5B's 151,936 x 896 head is 545 MB in float32 vs
  179 MB for all its int4 linears; measured 1.13x bf16-dense decode in fp32 vs 1.34x with a
  bf16 head). The rule: bf16 decode when 4 x dense float weights > integer weight bytes.

`resolve_dtype("auto", phase)` applies that rule; explicit names ("float32", "bf16", ...) pass
through unchanged for every phase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from slmkit.errors import SlmkitError
from slmkit.runtime.cpu import has_native_bf16

if TYPE_CHECKING:
    import torch

Phase = Literal["prefill", "decode"]

_NAMES = {
    "float32": "float32", "fp32": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "f16": "float16",
}


def auto_dtype_name(phase: Phase, flags: frozenset[str] | None = None, quantized: bool = False) -> str:
    """The dtype `auto` means for `phase` on a CPU with these flags (`quantized`: the model's
    decode steps mostly read integer weights, see `integer_bound`)."""
    if phase not in ("prefill", "decode"):
        raise SlmkitError(f"phase must be 'prefill' or 'decode', not {phase!r}")
    if has_native_bf16(flags):
        return "bfloat16"
    return "bfloat16" if phase == "decode" and not quantized else "float32"


def integer_bound(model) -> bool:
    """True when `model`'s decode steps mostly read integer weights: it has integer linears and
    its dense float linears (4 bytes each in float32) weigh no more than the integer ones."""
    from slmkit.runtime.modules import decode_weight_bytes, is_quantized

    if not is_quantized(model):
        return False
    int_bytes, dense = decode_weight_bytes(model)
    return 4 * dense <= int_bytes


def resolve_dtype(dtype: "str | torch.dtype", phase: Phase = "prefill", model=None) -> "torch.dtype":
    """Turn 'auto' / a dtype name / a torch.dtype into a torch.dtype for `phase` (and `model`:
    integer-bound models, see `integer_bound`, decode in float32 on CPUs without native bf16)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name == "auto":
        name = auto_dtype_name(phase, quantized=model is not None and integer_bound(model))
    if name not in _NAMES:
        raise SlmkitError(
            f"unknown dtype {dtype!r}; use auto, float32 (fp32), bfloat16 (bf16) or float16 (fp16)"
        )
    return getattr(torch, _NAMES[name])


def describe_policy() -> dict:
    """What `auto` resolves to on this machine, and why (for reports and `slmkit info`)."""
    return {
        "native_bf16": has_native_bf16(),
        "prefill": auto_dtype_name("prefill"),
        "decode": auto_dtype_name("decode"),
        "decode_quantized": auto_dtype_name("decode", quantized=True),
    }
