"""GGUF's block types Q8_0, Q5_0 and Q4_0 as `QuantizedWeight` grids, and their exact byte layout.

Each block holds 32 consecutive weights of a row, one float16 scale `d` and integer codes; llama.cpp
dequantizes a code x to (x - 2^(bits-1)) * d in float32:

    Q8_0  34 bytes: d, 32 signed bytes (the code minus 128)
    Q5_0  22 bytes: d, 4 bytes of fifth bits (bit j: weight j), 16 bytes of low nibbles
                    (byte j: weight j low, weight j + 16 high)
    Q4_0  18 bytes: d, 16 bytes of nibbles (byte j: weight j low, weight j + 16 high)

A `QuantizedWeight` is on such a grid when it has `bits` 8, 5 or 4, groups of 32, the zero point
2^(bits-1) everywhere and float16-exact scales (`gguf_type`); its dequantized values are then what
llama.cpp computes from the bytes `encode` writes, bit for bit. `decode` reads the bytes back.
The grid itself (scale from the row's extreme on the full negative level, as llama-quantize
places it, rounded to float16) is `slmkit.runtime.qweight.grid(..., symmetric="gguf")`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from slmkit.errors import SlmkitError
from slmkit.runtime.qweight import QuantizedWeight

BLOCK = 32


@dataclass(frozen=True)
class BlockType:
    """One GGUF block type: its name in ggml, bits per code, and bytes per 32-weight block."""

    name: str
    bits: int
    block_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / BLOCK


BLOCK_TYPES = {
    "q8_0": BlockType("Q8_0", 8, 34),
    "q5_0": BlockType("Q5_0", 5, 22),
    "q4_0": BlockType("Q4_0", 4, 18),
}
BY_BITS = {t.bits: key for key, t in BLOCK_TYPES.items()}


def block_type(name: str) -> BlockType:
    try:
        return BLOCK_TYPES[name.lower()]
    except KeyError:
        raise SlmkitError(f"unknown GGUF block type {name!r}; slmkit quantizes onto "
                          f"{', '.join(BLOCK_TYPES)}") from None


def gguf_type(qw: QuantizedWeight) -> str | None:
    """The block type ("q8_0", "q5_0", "q4_0") whose grid `qw` lies on exactly, or None."""
    key = BY_BITS.get(qw.bits)
    cols = qw.q.shape[1]
    if key is None or qw.group_size != BLOCK or cols % BLOCK or qw.act_bits is not None:
        return None
    if not torch.equal(qw.g_idx, torch.arange(cols) // BLOCK):
        return None
    if not bool((qw.zero == 2 ** (qw.bits - 1)).all()):
        return None
    scale = qw.scale.float()
    if not torch.equal(scale.half().float(), scale) or not bool(scale.isfinite().all()):
        return None
    return key


def encode(qw: QuantizedWeight, name: str | None = None) -> np.ndarray:
    """The GGUF bytes of `qw` -> uint8 [out, in / 32 * block_bytes], the array `gguf.GGUFWriter`
    takes for a tensor of that block type. `name` checks the type; by default it is `qw`'s own."""
    key = gguf_type(qw)
    if key is None or (name is not None and key != name.lower()):
        want = f"the {name} grid" if name else "a GGUF block grid (q8_0, q5_0, q4_0)"
        raise SlmkitError(f"this {qw.bits}-bit weight (groups of {qw.group_size}) is not on {want}: "
                          "quantize it with gguf_type set to write it unchanged")
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


def decode(raw: np.ndarray, name: str, cols: int) -> QuantizedWeight:
    """`QuantizedWeight` of GGUF bytes uint8 [out, cols / 32 * block_bytes] of block type `name`."""
    t = block_type(name)
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, cols // BLOCK, t.block_bytes)
    d = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32))
    body = blocks[..., 2:]
    if t.name == "Q8_0":
        x = body.view(np.int8).astype(np.int16) + 128
    else:
        qs = body[..., -16:]
        x = np.concatenate([qs & 0xF, qs >> 4], axis=-1).astype(np.int16)
        if t.name == "Q5_0":
            qh = body[..., :4].copy().view("<u4")[..., 0]
            x |= (((qh[..., None] >> np.arange(BLOCK, dtype=np.uint32)) & 1) << 4).astype(np.int16)
    q = torch.from_numpy(x.reshape(rows, cols).astype(np.uint8))
    zero = torch.full_like(d, 2 ** (t.bits - 1))
    return QuantizedWeight(q, d, zero, torch.arange(cols) // BLOCK, t.bits, BLOCK)
