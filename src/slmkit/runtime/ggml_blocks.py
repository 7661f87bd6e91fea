"""GGUF's block types Q8_0, Q5_0, Q4_0, Q6_K, Q4_K and Q5_K as `QuantizedWeight` grids, and their
exact byte layout. llama.cpp dequantizes a code x to (x - 2^(bits-1)) * scale in float32, or for
Q4_K / Q5_K to x * scale - min:

    Q8_0  34 bytes per 32 weights: float16 scale d, 32 signed bytes (the code minus 128)
    Q5_0  22 bytes per 32 weights: d, 4 bytes of fifth bits (bit j: weight j), 16 bytes of low
          nibbles (byte j: weight j low, weight j + 16 high)
    Q4_0  18 bytes per 32 weights: d, 16 bytes of nibbles (byte j: weight j low, weight j + 16 high)
    Q6_K  210 bytes per 256 weights: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8
          sub-scales (one per 16 weights), float16 d; a group's scale is d * sub-scale
    Q4_K  144 bytes per 256 weights: float16 d and dmin, 12 bytes of 6-bit scales and mins (one
          each per 32 weights: scale = d * sc, min = dmin * m), 128 bytes of nibbles (per 64
          weights, byte j: weight j low, weight j + 32 high)
    Q5_K  176 bytes per 256 weights: as Q4_K with 32 bytes of fifth bits after the scales (per 64
          weights n, byte j: bit 2n for weight j, bit 2n + 1 for weight j + 32)

A `QuantizedWeight` is on such a grid when it has the type's bits and group size, the zero point
2^(bits-1) everywhere and scales the type can store (`gguf_type`): float16 values for the _0
types; for Q6_K, per 256 weights, d = max |scale| / 127 a float16 value and every scale an integer
multiple of d; for Q4_K / Q5_K ("gguf_k"), exact mins (`offset`) and scales and mins that are
6-bit multiples of a float16 d and dmin per 256 weights. Its dequantized values are then what
llama.cpp computes from the bytes `encode` writes, bit for bit. `decode` reads the bytes back. The grid itself (scale from a group's extreme
on the full negative level, as llama-quantize places it) is `slmkit.runtime.qweight.grid(...,
symmetric="gguf")`, with Q6_K's two-level scales from `qweight.storable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from slmkit.errors import SlmkitError
from slmkit.runtime.qweight import QuantizedWeight, split_k, split_q6_k

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
    mins: bool = False       # a min per group (Q4_K, Q5_K): the "gguf_k" grid

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.weights


BLOCK_TYPES = {
    "q8_0": BlockType("Q8_0", 8, 34),
    "q5_0": BlockType("Q5_0", 5, 22),
    "q4_0": BlockType("Q4_0", 4, 18),
    "q6_k": BlockType("Q6_K", 6, 210, 256, 16),
    "q4_k": BlockType("Q4_K", 4, 144, 256, 32, mins=True),
    "q5_k": BlockType("Q5_K", 5, 176, 256, 32, mins=True),
}
BY_GRID = {(t.bits, t.mins): key for key, t in BLOCK_TYPES.items()}


def block_type(name: str) -> BlockType:
    try:
        return BLOCK_TYPES[name.lower()]
    except KeyError:
        raise SlmkitError(f"unknown GGUF block type {name!r}; slmkit quantizes onto "
                          f"{', '.join(BLOCK_TYPES)}") from None


def gguf_type(qw: QuantizedWeight) -> str | None:
    """The block type (a key of `BLOCK_TYPES`) whose grid `qw` lies on exactly, or None."""
    key = BY_GRID.get((qw.bits, qw.offset is not None))
    if key is None or qw.act_bits is not None:
        return None
    t, cols = BLOCK_TYPES[key], qw.q.shape[1]
    if qw.group_size != t.group or cols % t.weights:
        return None
    if not torch.equal(qw.g_idx, torch.arange(cols) // t.group):
        return None
    scale = qw.scale.float()
    if not bool(scale.isfinite().all()):
        return None
    if t.mins:
        return key if _two_level_k(scale) and _two_level_k(qw.offset.float()) else None
    if not bool((qw.zero == 2 ** (qw.bits - 1)).all()):
        return None
    if t.weights == t.group:
        return key if torch.equal(scale.half().float(), scale) else None
    d, sub = split_q6_k(scale)
    return key if torch.equal(d[..., None] * sub, scale.reshape(sub.shape)) else None


def _two_level_k(values: torch.Tensor) -> bool:
    """Whether non-negative values [rows, groups] are 6-bit multiples of a float16 d per 8 groups."""
    if not bool((values >= 0).all()):
        return False
    d, n = split_k(values)
    return torch.equal(d[..., None] * n, values.reshape(n.shape))


def _check(qw: QuantizedWeight, name: str | None) -> str:
    key = gguf_type(qw)
    if key is None or (name is not None and key != name.lower()):
        want = f"the {name} grid" if name else f"a GGUF block grid ({', '.join(BLOCK_TYPES)})"
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
    if BLOCK_TYPES[key].mins:
        return _encode_k(qw)
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


def _encode_k(qw: QuantizedWeight) -> np.ndarray:
    rows, cols = qw.q.shape
    nb = cols // 256
    d, sc = split_k(qw.scale)
    dmin, m = split_k(qw.offset)
    sc, m = sc.numpy().astype(np.uint8), m.numpy().astype(np.uint8)       # [rows, nb, 8]
    scales = np.concatenate([sc[..., :4] | ((sc[..., 4:] >> 4) << 6),      # bytes 0-3
                             m[..., :4] | ((m[..., 4:] >> 4) << 6),        # bytes 4-7
                             (sc[..., 4:] & 0xF) | ((m[..., 4:] & 0xF) << 4)], axis=-1)
    u = qw.q.numpy().astype(np.uint8).reshape(rows, nb, 4, 2, 32)   # 64-weight chunk, half, l
    parts = [d.half().numpy().view(np.uint8).reshape(rows, nb, 2),
             dmin.half().numpy().view(np.uint8).reshape(rows, nb, 2), scales]
    if qw.bits == 5:
        fifth = (u >> 4) & 1                                        # bit 2n: low half, 2n + 1: high
        shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]
        parts.append(((fifth[..., 0, :] << shifts) | (fifth[..., 1, :] << (shifts + 1))).sum(
            axis=-2, dtype=np.uint8))
    parts.append(((u[..., 0, :] & 0xF) | ((u[..., 1, :] & 0xF) << 4)).reshape(rows, nb, 128))
    return np.ascontiguousarray(np.concatenate(parts, axis=-1).reshape(rows, -1))


def _decode_k(blocks: np.ndarray, t: BlockType, rows: int, cols: int) -> QuantizedWeight:
    d = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
    dmin = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
    b = blocks[..., 4:16]
    sc = np.concatenate([b[..., :4] & 63, (b[..., 8:] & 0xF) | ((b[..., :4] >> 6) << 4)], axis=-1)
    m = np.concatenate([b[..., 4:8] & 63, (b[..., 8:] >> 4) | ((b[..., 4:8] >> 6) << 4)], axis=-1)
    qs = blocks[..., -128:].reshape(rows, -1, 4, 32)
    x = np.stack([qs & 0xF, qs >> 4], axis=-2)                      # [rows, nb, 4, 2, 32]
    if t.bits == 5:
        qh = blocks[..., 16:48][..., None, None, :]                 # [rows, nb, 1, 1, 32]
        shifts = (2 * np.arange(4, dtype=np.uint8))[:, None, None] + np.arange(2, dtype=np.uint8)[:, None]
        x = x | (((qh >> shifts) & 1) << 4)
    scale = (d[..., None] * torch.from_numpy(sc.astype(np.float32))).reshape(rows, -1)
    offset = (dmin[..., None] * torch.from_numpy(m.astype(np.float32))).reshape(rows, -1)
    q = torch.from_numpy(x.reshape(rows, cols).astype(np.uint8))
    return QuantizedWeight(q, scale, offset / scale, torch.arange(cols) // t.group, t.bits, t.group,
                           offset=offset)


def decode(raw: np.ndarray, name: str, cols: int) -> QuantizedWeight:
    """`QuantizedWeight` of GGUF bytes uint8 [out, cols / weights per block * block_bytes] of block
    type `name`."""
    t = block_type(name)
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, cols // t.weights, t.block_bytes)
    if t.mins:
        return _decode_k(blocks, t, rows, cols)
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
