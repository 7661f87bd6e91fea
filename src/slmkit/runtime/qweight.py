"""Integer weights on a grid (`QuantizedWeight`) and round-to-nearest (RTN) onto it: the
format every quantizer writes and every integer kernel reads.

A weight matrix W [out, in] is cut along `in` into groups of `group_size` columns (the last group
may be shorter when `group_size` does not divide `in`; `group_size=None` = one group per row, i.e.
per-channel). Each (row, group) gets a scale and an integer zero point; integers are unsigned in
[0, 2^bits - 1] and dequantize as (q - zero) * scale. Symmetric grids fix zero = 2^(bits-1) and
scale = max|w| / (2^(bits-1) - 1); asymmetric grids span [min(w, 0), max(w, 0)]. The "gguf" grid
is symmetric as GGUF's Q8_0 / Q5_0 / Q4_0 store it (`slmkit.runtime.ggml_blocks`): the row's
extreme value lands on the full negative level (scale = extreme / -2^(bits-1), negative when the
extreme is positive) and scales are float16 values; at 6 bits in groups of 16 (Q6_K) a group's
scale is a float16 d per 256 weights times an int8 sub-scale (`storable`). The "gguf_k" grid is
GGUF's Q4_K / Q5_K: unsigned codes, each group of 32 spanning [min(w, 0), max(w)] with a scale and
a min (`offset`) that are 6-bit multiples of two float16 values per 256 weights; a code dequantizes
as q * scale - offset, so its `zero` (offset / scale) is not an integer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slmkit.errors import SlmkitError

MIN_BITS, MAX_BITS = 2, 8


@dataclass
class QuantizedWeight:
    """Integer codes `q` [out, in] on a grid: `scale` and `zero` per (row, group), and each column's group."""

    q: torch.Tensor        # uint8 [out, in], original column order
    scale: torch.Tensor    # float32 [out, n_groups]
    zero: torch.Tensor     # float32 [out, n_groups] (integer-valued)
    g_idx: torch.Tensor    # int64 [in]: the group of each input column
    bits: int
    group_size: int | None
    act_bits: int | None = None  # activations quantized per token at run time (SmoothQuant W8A8)
    offset: torch.Tensor | None = None  # float32 [out, n_groups]: the "gguf_k" grid's exact mins

    def dequantize(self) -> torch.Tensor:
        """The float weight [out, in] that the codes stand for."""
        if self.offset is not None:
            return self.q.float() * self.scale[:, self.g_idx] - self.offset[:, self.g_idx]
        return (self.q.float() - self.zero[:, self.g_idx]) * self.scale[:, self.g_idx]


def check_bits(bits: int, group_size: int | None, in_features: int | None = None) -> None:
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise SlmkitError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], not {bits!r}")
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
        raise SlmkitError(f"group_size must be a positive integer or None (per-channel), not {group_size!r}")


GGUF = "gguf"      # the `symmetric` value of GGUF's symmetric block grids (Q8_0, Q5_0, Q4_0, Q6_K)
GGUF_K = "gguf_k"  # ... and of its grids with a min per group (Q4_K, Q5_K)


def grid(w: torch.Tensor, bits: int, symmetric: bool | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of `w` [rows, cols] -> ([rows], [rows]); `symmetric`: False,
    True, "gguf" or "gguf_k" (see the module docstring)."""
    maxq = 2 ** bits - 1
    if symmetric == GGUF_K:
        lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1)
        scale = (hi - lo) / maxq
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, -lo / scale
    if symmetric == GGUF:
        extreme = w.gather(1, w.abs().argmax(dim=1, keepdim=True))[:, 0]
        scale = (extreme / -(2 ** (bits - 1))).clamp(-65504, 65504).half().float()
        scale = torch.where(scale != 0, scale, torch.ones_like(scale))
        return scale, torch.full_like(scale, 2 ** (bits - 1))
    if symmetric:
        amax = w.abs().amax(dim=1)
        scale = amax / (2 ** (bits - 1) - 1 if bits > 1 else 1)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        lo = w.amin(dim=1).clamp(max=0)
        hi = w.amax(dim=1).clamp(min=0)
        scale = (hi - lo) / maxq
        zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero rows: any scale works
    return scale, zero


SUB_SCALE_MAX = 127  # GGUF's Q6_K: int8 sub-scales; the largest |scale| of a 256-weight block is 127 d


def split_q6_k(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group scales [rows, groups of 16] -> (d [rows, blocks] float16 values, sub-scales [rows,
    blocks, 16] rounded to integers in [-128, 127]), d = max |scale| / 127 per 16 groups."""
    s = scale.float().reshape(scale.shape[0], -1, 16)
    d = (s.abs().amax(-1) / SUB_SCALE_MAX).half().float()
    d = torch.where(d > 0, d, torch.ones_like(d))
    return d, torch.round(s / d[..., None]).clamp(-128, 127)


K_SCALE_MAX = 63  # GGUF's Q4_K / Q5_K: 6-bit scales and mins; the largest of a 256-weight block is 63 d


def split_k(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative group scales (or mins) [rows, groups of 32] -> (d [rows, blocks] float16
    values, integers [rows, blocks, 8] in [0, 63]), d = max / 63 per 8 groups."""
    v = values.float().reshape(values.shape[0], -1, 8)
    d = (v.amax(-1) / K_SCALE_MAX).half().float()
    d = torch.where(d > 0, d, torch.ones_like(d))
    return d, torch.round(v / d[..., None]).clamp(0, K_SCALE_MAX)


def two_level(bits: int, group_size: int | None, symmetric) -> bool:
    """Whether the grid is one of GGUF's K-quants: Q6_K (the "gguf" grid of 6 bits in groups of
    16) or Q4_K / Q5_K ("gguf_k"), whose scales come from whole 256-weight blocks (so they are
    set for all groups of a block at once)."""
    return (symmetric == GGUF and bits == 6 and group_size == 16) or symmetric == GGUF_K


def storable(scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int | None,
             symmetric) -> tuple[torch.Tensor, torch.Tensor]:
    """Group grids (scale, zero) [rows, groups] as the grid stores them: for Q6_K per 16 groups a
    float16 d and int8 multiples of it (the nearest; never 0); for Q4_K / Q5_K per 8 groups
    6-bit multiples of a float16 d (scales, never 0) and of a float16 dmin (mins, the offsets
    zero * scale); any other grid's unchanged."""
    if not two_level(bits, group_size, symmetric) or scale.shape[1] % (256 // group_size):
        return scale, zero
    if symmetric == GGUF_K:
        d, sc = split_k(scale)
        scale_s = (d[..., None] * sc.clamp(min=1)).reshape(scale.shape)
        dmin, m = split_k(zero * scale)
        return scale_s, (dmin[..., None] * m).reshape(scale.shape) / scale_s
    d, sub = split_q6_k(scale)
    sub = torch.where(sub == 0, torch.ones_like(sub), sub)
    return (d[..., None] * sub).reshape(scale.shape), zero


def k_offset(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The exact mins [rows, groups] of a stored Q4_K / Q5_K grid (`storable`) from its scales and
    zeros: the float16 dmin times the 6-bit integers, which zero * scale equals up to float error."""
    dmin, m = split_k(zero * scale)
    return (dmin[..., None] * m).reshape(scale.shape)


def quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of `w` on the grid (broadcasting scale/zero) as float: round(w / scale + zero),
    with an integer zero added after rounding (so it cannot move a tie)."""
    whole = torch.round(zero)
    return torch.clamp(torch.round(w / scale + (zero - whole)) + whole, 0, 2 ** bits - 1)


def group_index(in_features: int, group_size: int | None) -> torch.Tensor:
    g = group_size or in_features
    return torch.arange(in_features) // g


def rtn(w: torch.Tensor, bits: int = 4, group_size: int | None = 128,
        symmetric: bool | str = False) -> QuantizedWeight:
    """Quantize `w` [out, in] to the nearest grid point, group by group."""
    check_bits(bits, group_size)
    w = w.detach().float()
    g_idx = group_index(w.shape[1], group_size)
    n_groups = int(g_idx[-1]) + 1
    scale = torch.empty(w.shape[0], n_groups)
    zero = torch.empty(w.shape[0], n_groups)
    g = group_size or w.shape[1]
    for j in range(n_groups):
        cols = slice(j * g, min((j + 1) * g, w.shape[1]))
        scale[:, j], zero[:, j] = grid(w[:, cols], bits, symmetric)
    scale, zero = storable(scale, zero, bits, group_size, symmetric)
    q = quantize_column(w, scale[:, g_idx], zero[:, g_idx], bits).to(torch.uint8)
    return make_weight(q, scale, zero, g_idx, bits, group_size, symmetric)


def make_weight(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor,
                bits: int, group_size: int | None, symmetric) -> QuantizedWeight:
    """The `QuantizedWeight` of codes on a grid; a "gguf_k" grid gets its exact mins (`k_offset`)."""
    offset = k_offset(scale, zero) if symmetric == GGUF_K else None
    return QuantizedWeight(q, scale, zero, g_idx, bits, group_size, offset=offset)
