"""Bit packing: unsigned b-bit integer codes <-> int32 words, the dense layout compressed-tensors'
"pack-quantized" format uses (so checkpoints we write load in transformers/vLLM and theirs load here).

Along the packed dimension, element i occupies bits [i*b, (i+1)*b) of the row's bit string; word w
holds bits [32w, 32w+32), least significant first. 32 elements fill exactly b words, so nothing is
wasted for any b in 1..8; a row of n elements takes ceil(n*b/32) words. compressed-tensors stores
signed values v in [-2^(b-1), 2^(b-1)) as v + 2^(b-1) — exactly our unsigned codes, so packing our
codes directly gives their bytes.
"""

from __future__ import annotations

import math

import torch

from slmkit.errors import SlmkitError


def _check(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise SlmkitError(f"can only pack 1-8 bit codes, not {bits!r}")


def packed_words(n: int, bits: int) -> int:
    """int32 words for a row of `n` codes of `bits` bits."""
    return math.ceil(n * bits / 32)


def pack_int32(codes: torch.Tensor, bits: int, dim: int = 1) -> torch.Tensor:
    """Pack unsigned codes [rows, cols] (any integer dtype, values in [0, 2^bits)) along `dim`."""
    _check(bits)
    if codes.ndim != 2:
        raise SlmkitError(f"pack_int32 takes a 2-D tensor, got shape {tuple(codes.shape)}")
    v = codes.to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise SlmkitError(f"codes out of range for {bits} bits: [{int(v.min())}, {int(v.max())}]")
    if dim == 0:
        v = v.T
    rows, cols = v.shape
    words = packed_words(cols, bits)
    start = torch.arange(cols, dtype=torch.int64) * bits           # [cols] first bit of each code
    word, offset = start // 32, start % 32
    out = torch.zeros(rows, words + 1, dtype=torch.int64)          # +1: spill-over of the last code
    out.scatter_add_(1, word.expand(rows, -1), (v << offset) & 0xFFFFFFFF)
    spill = offset + bits > 32                                     # codes crossing a word boundary
    if spill.any():
        out.scatter_add_(1, (word[spill] + 1).expand(rows, -1), v[:, spill] >> (32 - offset[spill]))
    out = out[:, :words]
    out = torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)  # two's complement
    return out.T.contiguous() if dim == 0 else out.contiguous()


def unpack_int32(packed: torch.Tensor, bits: int, n: int, dim: int = 1) -> torch.Tensor:
    """Inverse of `pack_int32`: int32 words -> uint8 codes with `n` elements along `dim`."""
    _check(bits)
    if packed.dtype != torch.int32 or packed.ndim != 2:
        raise SlmkitError(f"unpack_int32 takes a 2-D int32 tensor, got {packed.dtype} "
                          f"{tuple(packed.shape)}")
    w = packed.T if dim == 0 else packed
    if w.shape[1] != packed_words(n, bits):
        raise SlmkitError(f"{w.shape[1]} packed words cannot hold {n} codes of {bits} bits "
                          f"(expected {packed_words(n, bits)})")
    w = w.to(torch.int64) & 0xFFFFFFFF
    w = torch.cat([w, torch.zeros(w.shape[0], 1, dtype=torch.int64)], dim=1)
    start = torch.arange(n, dtype=torch.int64) * bits
    word, offset = start // 32, start % 32
    v = (w[:, word] >> offset) | (w[:, word + 1] << (32 - offset))  # second term: spill-over bits
    v = (v & ((1 << bits) - 1)).to(torch.uint8)
    return v.T.contiguous() if dim == 0 else v
