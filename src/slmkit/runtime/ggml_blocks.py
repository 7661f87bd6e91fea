"""GGUF's block types Q8_0, Q5_0, Q4_0 and Q6_K as `QuantizedWeight` grids, and their exact byte
layout. llama.cpp dequantizes a code x to (x - 2^(bits-1)) * scale in float32:

    Q8_0  34 bytes per 32 weights: float16 scale d, 32 signed bytes (the code minus 128)
    Q5_0  22 bytes per 32 weights: d, 4 bytes of fifth bits (bit j: weight j), 16 bytes of low
          nibbles (byte j: weight j low, weight j + 16 high)
    Q4_0  18 bytes per 32 weights: d, 16 bytes of nibbles (byte j: weight j low, weight j + 16 high)
    Q6_K  210 bytes per 256 weights: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8
          sub-scales (one per 16 weights), float16 d; a group's scale is d * sub-scale

A `QuantizedWeight` is on such a grid when it has the type's bits and group size, the zero point
2^(bits-1) everywhere and scales the type can store (`gguf_type`): float16 values for the _0
types; for Q6_K, per 256 weights, d = max |scale| / 127 a float16 value and every scale an integer
multiple of d. Its dequantized values are then what llama.cpp computes from the bytes `encode`
writes, bit for bit. `decode` reads the bytes back. The grid itself (scale from a group's extreme
on the full negative level, as llama-quantize places it) is `slmkit.runtime.qweight.grid(...,
symmetric="gguf")`, with Q6_K's two-level scales from `qweight.storable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from slmkit.errors import SlmkitError
from slmkit.runtime.qweight import QuantizedWeight, split_q6_k

BLOCK = 32


@dataclass(frozen=True)
class BlockType:
    """One GGUF block type: its name in ggml, bits per code, bytes per block, weights per block
    and per scale."""

    name: str
    bits: int
    block_bytes: int
    weights: int = BLOCK     # per block: a row must hold a whole number of blocks
    group: int = BLOCK       # per scale

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.weights


BLOCK_TYPES = {
    "q8_0": BlockType("Q8_0", 8, 34),
    "q5_0": BlockType("Q5_0", 5, 22),
    "q4_0": BlockType("Q4_0", 4, 18),
    "q6_k": BlockType("Q6_K", 6, 210, 256, 16),
}
BY_BITS = {t.bits: key for key, t in BLOCK_TYPES.items()}


def block_type(name: str) -> BlockType:
    try:
        return BLOCK_TYPES[name.lower()]
    except KeyError:
        raise SlmkitError(f"unknown GGUF block type {name!r}; slmkit quantizes onto "
                          f"{', '.join(BLOCK_TYPES)}") from None


def gguf_type(qw: QuantizedWeight) -> str | None:
    """The block type ("q8_0", "q5_0", "q4_0", "q6_k") whose grid `qw` lies on exactly, or None."""
    key = BY_BITS.get(qw.bits)
    if key is None or qw.act_bits is not None:
        return None
    t, cols = BLOCK_TYPES[key], qw.q.shape[1]
    if qw.group_size != t.group or cols % t.weights:
        return None
    if not torch.equal(qw.g_idx, torch.arange(cols) // t.group):
        return None
    if not bool((qw.zero == 2 ** (qw.bits - 1)).all()):
        return None
    scale = qw.scale.float()
    if not bool(scale.isfinite().all()):
        return None
    if t.weights == t.group:
        return key if torch.equal(scale.half().float(), scale) else None
    d, sub = split_q6_k(scale)
    return key if torch.equal(d[..., None] * sub, scale.reshape(sub.shape)) else None


def _check(qw: QuantizedWeight, name: str | None) -> str:
    key = gguf_type(qw)
    if key is None or (name is not None and key != name.lower()):
        want = f"the {name} grid" if name else "a GGUF block grid (q8_0, q5_0, q4_0, q6_k)"
        raise SlmkitError(f"this {qw.bits}-bit weight (groups of {qw.group_size}) is not on {want}: "
                          "quantize it with gguf_type set to write it unchanged")
    return key


def encode(qw: QuantizedWeight, name: str | None = None) -> np.ndarray:
    """The GGUF bytes of `qw` -> uint8 [out, in / weights per block * block_bytes], the array
    `gguf.GGUFWriter` takes for a tensor of that block type. `name` checks the type; by default it
    is `qw`'s own."""
    key = _check(qw, name)
    if key == "q6_k":
        return _encode_q6_k(qw)
    rows, cols = qw.q.shape
    nb = cols // BLOCK
    d = qw.scale.float().half().numpy().view(np.uint8).reshape(rows, nb, 2)
    x = qw.q.numpy().astype(np.uint8).reshape(rows, nb, BLOCK)
    if key == "q8_0":
        body = (x.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
    else:
        lo, hi = x[..., :16] & 0xF, x[..., 16:] & 0xF
        body = lo | (hi << 4)
        if key == "q5_0":
            fifth = ((x >> 4) & 1).astype(np.uint32)
            qh = (fifth << np.arange(BLOCK, dtype=np.uint32)).sum(-1, dtype=np.uint32)
            body = np.concatenate([qh.astype("<u4")[..., None].view(np.uint8), body], axis=-1)
    return np.ascontiguousarray(np.concatenate([d, body], axis=-1).reshape(rows, -1))


def _encode_q6_k(qw: QuantizedWeight) -> np.ndarray:
    rows, cols = qw.q.shape
    nb = cols // 256
    d, sub = split_q6_k(qw.scale)
    u = qw.q.numpy().astype(np.uint8).reshape(rows, nb, 2, 4, 32)   # half, quarter of a half, l
    lo, hi = u & 0xF, u >> 4
    ql = np.concatenate([lo[..., 0, :] | (lo[..., 2, :] << 4), lo[..., 1, :] | (lo[..., 3, :] << 4)], axis=-1)
    qh = hi[..., 0, :] | (hi[..., 1, :] << 2) | (hi[..., 2, :] << 4) | (hi[..., 3, :] << 6)
    parts = [ql.reshape(rows, nb, 128), qh.reshape(rows, nb, 64),
             sub.numpy().astype(np.int8).view(np.uint8).reshape(rows, nb, 16),
             d.half().numpy().view(np.uint8).reshape(rows, nb, 2)]
    return np.ascontiguousarray(np.concatenate(parts, axis=-1).reshape(rows, -1))


def decode(raw: np.ndarray, name: str, cols: int) -> QuantizedWeight:
    """`QuantizedWeight` of GGUF bytes uint8 [out, cols / weights per block * block_bytes] of block
    type `name`."""
    t = block_type(name)
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, cols // t.weights, t.block_bytes)
    if t.name == "Q6_K":
        ql, qh = blocks[..., :128].reshape(rows, -1, 2, 64), blocks[..., 128:192].reshape(rows, -1, 2, 32)
        lo = np.stack([ql[..., :32] & 0xF, ql[..., 32:] & 0xF, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=-2)
        hi = np.stack([(qh >> k) & 3 for k in (0, 2, 4, 6)], axis=-2)
        x = (lo | (hi << 4)).reshape(rows, cols)
        sub = torch.from_numpy(blocks[..., 192:208].copy().view(np.int8).astype(np.float32))
        d = torch.from_numpy(blocks[..., 208:210].copy().view(np.float16)[..., 0].astype(np.float32))
        scale = (d[..., None] * sub).reshape(rows, -1)
    else:
        scale = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32))
        body = blocks[..., 2:]
        if t.name == "Q8_0":
            x = body.view(np.int8).astype(np.int16) + 128
        else:
            qs = body[..., -16:]
            x = np.concatenate([qs & 0xF, qs >> 4], axis=-1).astype(np.int16)
            if t.name == "Q5_0":
                qh5 = body[..., :4].copy().view("<u4")[..., 0]
                x |= (((qh5[..., None] >> np.arange(BLOCK, dtype=np.uint32)) & 1) << 4).astype(np.int16)
    q = torch.from_numpy(np.asarray(x).reshape(rows, cols).astype(np.uint8))
    zero = torch.full_like(scale, 2 ** (t.bits - 1))
    return QuantizedWeight(q, scale, zero, torch.arange(cols) // t.group, t.bits, t.group)
