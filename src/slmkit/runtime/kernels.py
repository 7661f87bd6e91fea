"""Integer-weight linear layers that run on PyTorch's own CPU kernels.

- `Int4Linear`: codes of <= 4 bits, grouped; slmkit's native AVX2 kernel (`native.py`) where it
  builds, else `aten._weight_int4pack_mm_for_cpu` (tinygemm's CPU port) on bf16 activations.
- `Int8Linear`: 5-8 bit codes, one scale per output channel, weight-only:
  `aten._weight_int8pack_mm`; an asymmetric zero point becomes a rank-1 correction.
- `W8A8Linear`: int8 symmetric per-channel weights and dynamic per-token int8 activations
  (SmoothQuant); `torch._int_mm` on CPUs with int8 dot products, else the int8-weight kernel
  fed the same integers (see the class).
- `DequantLinear`: any other layout (e.g. 6-bit grouped, or a shape the kernels reject): holds the
  dequantized weight and uses a dense matmul. No faster than the original; it exists so every
  quantized model still runs, and `pick_kernel` says why it was chosen.

All of them carry the quantization grid (`scale`, `zero`: float32 [out, groups] over contiguous
groups of `group_size` input columns; None = one group per row) so the exact integer codes can be
recovered for saving (`codes()`), and `dense_weight()` for export. These are plain attributes, not
buffers, so `model.to(torch.bfloat16)` cannot round the grid.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.runtime import native
from slmkit.runtime.cpu import has_int8_dot, has_native_bf16
from slmkit.runtime.pack import pack_int32, unpack_int32
from slmkit.runtime.qweight import QuantizedWeight

INT4_GROUPS = (256, 128, 64, 32)  # group sizes aten's CPU int4 kernel accepts
INT4_ROWS = 16                    # ... and out_features must be a multiple of this


class QuantLinear(nn.Module):
    """Common part: shapes, bias, the grid, and conversions to/from `QuantizedWeight`."""

    kernel = "?"

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None, group_size: int | None):
        super().__init__()
        self.out_features, self.in_features = qw.q.shape
        self.bits, self.act_bits, self.group_size = qw.bits, qw.act_bits, group_size
        self.scale = qw.scale.float().contiguous()  # [out, groups]
        self.zero = qw.zero.float().contiguous()    # [out, groups], integer-valued but on "gguf_k" grids
        # the "gguf_k" grid's exact mins (the kernels use zero = offset / scale, equal to float error)
        self.offset = None if qw.offset is None else qw.offset.float().contiguous()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    # ---- grid -------------------------------------------------------------------------------
    def g_idx(self) -> torch.Tensor:
        return torch.arange(self.in_features) // (self.group_size or self.in_features)

    def dense_weight(self) -> torch.Tensor:
        """The dequantized weight [out, in], float32."""
        raise NotImplementedError

    def codes(self) -> torch.Tensor:
        """The unsigned integer codes [out, in] (uint8), recovered exactly from the kernel's form."""
        g = self.g_idx()
        q = torch.round(self.dense_weight() / self.scale[:, g] + self.zero[:, g])
        return q.clamp(0, 2 ** self.bits - 1).to(torch.uint8)

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.codes(), self.scale, self.zero, self.g_idx(), self.bits,
                               self.group_size, self.act_bits, self.offset)

    def _finish(self, y: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(dtype).reshape(*shape[:-1], self.out_features)

    def _native(self, fn: str, *args) -> None:
        lib = native.library()
        if lib is None:
            raise SlmkitError(f"this layer was built for slmkit's native kernels, which are no longer "
                              f"available ({native.status()}); rebuild the model with slmkit.models.load")
        rc = getattr(lib, fn)(*args)
        if rc != 0:
            raise SlmkitError(f"native kernel {fn} failed (code {rc}) on a "
                              f"{self.out_features}x{self.in_features} layer; set SLMKIT_NATIVE=0")

    def extra_repr(self) -> str:
        g = self.group_size or "channel"
        act = f", act_bits={self.act_bits}" if self.act_bits else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={g}{act}, kernel={self.kernel}")


class Int4Linear(QuantLinear):
    """Two engines, chosen once per layer (`kernel` says which):

    - slmkit's native kernel (`native.py`, AVX2 + a C compiler): decode-sized inputs (up to
      `NATIVE_ROWS` tokens) multiply the packed nibbles directly; longer inputs dequantize the
      layer to float32 and use a BLAS matmul, which on AVX2 beats every integer kernel at prefill.
    - otherwise `aten._weight_int4pack_mm_for_cpu`, with activations in bf16 whatever their dtype:
      its fp32 path is a scalar fallback (~100x slower on AVX2, benchmarks/int_kernels.py).

    The codes are always kept bit-packed (0.5 byte/weight) so saving and `dense_weight` are exact
    and cheap; the native kernel reads them in place."""

    NATIVE_ROWS = 8

    def __init__(self, qw, bias, group_size):
        super().__init__(qw, bias, group_size)
        k = self.in_features
        self._shared, self._shared_index = None, 0   # see fuse.py
        self.packed_codes = pack_int32(qw.q, self.bits)                   # [out, in * bits / 32]
        # a flag, not the library handle: modules must stay deep-copyable (ctypes handles are not)
        self._native_ok = native.supports(k, group_size or k) and native.library() is not None
        if self._native_ok:
            self.nibbles = (self.packed_codes if self.bits == 4 else pack_int32(qw.q, 4)).view(torch.uint8)
            self._fast_low_precision = has_native_bf16()
            return
        self.kgroup = next(s for s in INT4_GROUPS if (group_size or k) % s == 0)
        # tinygemm dequantizes (q - 8) * s + zf; ours is (q - z) * s. Codes of fewer bits are
        # shifted to sit around 8 so that zf = (8 - z) * s stays small (it is stored in bf16)
        shift = 8 - 2 ** (self.bits - 1)
        reps = (group_size or k) // self.kgroup
        s = self.scale.repeat_interleave(reps, dim=1)                      # [out, k / kgroup]
        zf = ((8 - self.zero - shift) * self.scale).repeat_interleave(reps, dim=1)
        self.scale_zeros = torch.stack([s.T, zf.T], dim=-1).to(torch.bfloat16).contiguous()
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            qw.q.to(torch.int32) + shift, 1)

    @property
    def kernel(self) -> str:
        if self._native_ok:
            return "slmkit native int4 (decode) / float32 dequantize + BLAS (prefill)"
        return "aten._weight_int4pack_mm_for_cpu (bf16 activations)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features)
        if not self._native_ok:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(torch.bfloat16).contiguous(), self.packed, self.kgroup, self.scale_zeros)
        elif x2.shape[0] <= self.NATIVE_ROWS and self._shared is not None:
            y = self._shared.output(self._shared_index, x, x2.float().contiguous(), self._native)
        elif x2.shape[0] <= self.NATIVE_ROWS:
            xf = x2.float().contiguous()
            y = torch.empty(xf.shape[0], self.out_features)
            self._native("int4_gemv", xf.data_ptr(), xf.shape[0], self.in_features,
                         self.nibbles.data_ptr(), self.scale.data_ptr(), self.zero.data_ptr(),
                         self.out_features, self.group_size or self.in_features, y.data_ptr())
        elif x2.dtype == torch.float32 or not self._fast_low_precision:
            y = x2.float() @ self._dequantize().T  # bf16 matmuls are ~8x slower without AMX/AVX512-BF16
        else:
            y = x2 @ self._dequantize().to(x2.dtype).T
        return self._finish(y, shape, dtype)

    def _dequantize(self) -> torch.Tensor:
        w = torch.empty(self.out_features, self.in_features)
        self._native("int4_dequant", self.nibbles.data_ptr(), self.scale.data_ptr(),
                     self.zero.data_ptr(), self.out_features, self.in_features,
                     self.group_size or self.in_features, w.data_ptr())
        return w

    def codes(self) -> torch.Tensor:
        return unpack_int32(self.packed_codes, self.bits, self.in_features)

    def dense_weight(self) -> torch.Tensor:
        g = self.g_idx()
        if self.offset is not None:  # exact, as GGUF's Q4_K computes it
            return self.codes().float() * self.scale[:, g] - self.offset[:, g]
        if self._native_ok:
            return self._dequantize()
        return (self.codes().float() - self.zero[:, g]) * self.scale[:, g]


class Int8Linear(QuantLinear):
    """Decode-sized inputs (up to `DECODE_ROWS` tokens) use slmkit's native int8 kernel where it
    builds (`native.py`: int16-quantized activations, ~2^-16 relative error, 2-3x faster than
    aten's on AVX2), else `aten._weight_int8pack_mm`, which takes bf16/fp16 activations at full
    speed but has a scalar float32 path (~10x slower than dense, benchmarks/int_kernels.py), so
    float32 inputs go through it in bf16 (the activation rounding of a W8A16 kernel). Longer
    float32 inputs (prefill) are multiplied exactly against the weight dequantized to float32 a
    block of `CHUNK` output rows at a time (bounded memory for a vocabulary-sized head)."""

    DECODE_ROWS = 8
    CHUNK = 8192

    def __init__(self, qw, bias, group_size):
        super().__init__(qw, bias, group_size)
        self.weight_int8 = (qw.q.to(torch.int16) - 128).to(torch.int8).contiguous()  # [out, in]
        s = self.scale[:, 0].contiguous()
        self._s32, self._corr32 = s, ((128 - self.zero[:, 0]) * s).contiguous()  # per output row
        self._asym = bool((self.zero != 128).any())
        self._cache: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}
        self._native_ok = (type(self) is Int8Linear and self.in_features % 32 == 0
                           and native.library() is not None)

    @property
    def kernel(self) -> str:
        if self._native_ok:
            return "slmkit native int8 (decode) / float32 dequantize + BLAS (prefill)"
        return "aten._weight_int8pack_mm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features)
        if self._native_ok and x2.shape[0] <= self.DECODE_ROWS:
            xf = x2.float().contiguous()
            y = torch.empty(xf.shape[0], self.out_features)
            self._native("int8_gemv", xf.data_ptr(), xf.shape[0], self.in_features,
                         self.weight_int8.data_ptr(), self._s32.data_ptr(), self._corr32.data_ptr(),
                         self.out_features, y.data_ptr())
            return self._finish(y, shape, dtype)
        if x2.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            x2 = x2.float()
        if x2.dtype == torch.float32 and x2.shape[0] > self.DECODE_ROWS:
            return self._finish(self._dense_chunks(x2), shape, dtype)
        x2 = (x2.to(torch.bfloat16) if x2.dtype == torch.float32 else x2).contiguous()
        if x2.dtype not in self._cache:
            self._cache[x2.dtype] = (self._s32.to(x2.dtype), self._corr32.to(x2.dtype))
        s, corr = self._cache[x2.dtype]
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, s)
        if self._asym:
            y = y + x2.sum(-1, keepdim=True) * corr
        return self._finish(y, shape, dtype)

    def _dense_chunks(self, x2: torch.Tensor) -> torch.Tensor:
        y = torch.empty(x2.shape[0], self.out_features)
        for r in range(0, self.out_features, self.CHUNK):
            rows = slice(r, r + self.CHUNK)
            w = (self.weight_int8[rows].float() + 128 - self.zero[rows]) * self.scale[rows]
            y[:, rows] = x2 @ w.T
        return y

    def dense_weight(self) -> torch.Tensor:
        return (self.weight_int8.float() + 128 - self.zero) * self.scale


class W8A8Linear(Int8Linear):
    """int8 weights x dynamic per-token int8 activations (symmetric, max |x| -> 127).

    With VNNI/AMX-INT8 the int8 x int8 -> int32 product is `torch._int_mm`. Without them (AVX2),
    `_int_mm` runs ~40x slower than a float32 matmul and fbgemm's int8 GEMM saturates its 16-bit
    intermediate sums unless activations are cut to 7 bits (benchmarks/int_kernels.py), so the
    same integers go through `aten._weight_int8pack_mm` as bf16 values (exact: |q| <= 127), with
    the output rounded to bf16. Either way the result is the W8A8 product the checkpoint defines."""

    def __init__(self, qw, bias, group_size):
        super().__init__(qw, bias, group_size)
        if self._asym:
            raise SlmkitError("W8A8 needs symmetric int8 weights (zero point 128)")
        self.use_int_mm = has_int8_dot()
        self.weight_t = self.weight_int8.T.contiguous()                    # [in, out] for _int_mm
        self._ones = torch.ones(self.out_features, dtype=torch.bfloat16)

    @property
    def kernel(self) -> str:
        return "torch._int_mm" if self.use_int_mm else "aten._weight_int8pack_mm (int8-valued bf16 activations)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features).float()
        step = x2.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127      # [tokens, 1]
        xq = torch.round(x2 / step).clamp(-127, 127)
        if self.use_int_mm:
            acc = torch._int_mm(xq.to(torch.int8).contiguous(), self.weight_t)  # int32
        else:
            acc = torch.ops.aten._weight_int8pack_mm(xq.to(torch.bfloat16).contiguous(),
                                                      self.weight_int8, self._ones)
        return self._finish(acc.float() * step * self._s32, shape, dtype)


class DequantLinear(QuantLinear):
    kernel = "dense (no integer kernel for this layout)"

    def __init__(self, qw, bias, group_size):
        super().__init__(qw, bias, group_size)
        self.dense = qw.dequantize().float().contiguous()  # plain attribute: .to(bf16) keeps it exact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dense.to(x.dtype),
                                    None if self.bias is None else self.bias.to(x.dtype))

    def dense_weight(self) -> torch.Tensor:
        return self.dense


def storage_group_size(qw: QuantizedWeight) -> int | None:
    """A group size that divides in_features and reproduces `qw`'s grid exactly.

    A quantization group size that does not divide in_features leaves a short last group (e.g.
    576 columns in groups of 128); stored with gcd(group, in) columns per group, every original
    group is a whole number of stored groups sharing one scale, so nothing changes numerically."""
    k = qw.q.shape[1]
    if qw.group_size is None:
        return None
    if not torch.equal(qw.g_idx, torch.arange(k) // qw.group_size):
        raise SlmkitError("this weight's groups are not contiguous (act_order without "
                          "static_groups); no checkpoint format stores that here: quantize with "
                          "static_groups=True")
    return qw.group_size if k % qw.group_size == 0 else math.gcd(qw.group_size, k)


def regroup(qw: QuantizedWeight, group_size: int | None) -> QuantizedWeight:
    """`qw` with its scale/zero repeated onto contiguous groups of `group_size` (which must
    subdivide every original group)."""
    k = qw.q.shape[1]
    if group_size == qw.group_size:
        return qw
    g = torch.arange(k) // (group_size or k)
    first = torch.arange(0, k, group_size or k)       # first column of each new group
    orig = qw.g_idx[first]
    if not torch.equal(qw.g_idx, orig[g]):
        raise SlmkitError(f"group size {group_size} does not subdivide the original groups")
    offset = None if qw.offset is None else qw.offset[:, orig].contiguous()
    return QuantizedWeight(qw.q, qw.scale[:, orig].contiguous(), qw.zero[:, orig].contiguous(), g,
                           qw.bits, group_size, qw.act_bits, offset)


def pick_kernel(qw: QuantizedWeight, group_size: int | None) -> tuple[type[QuantLinear], str]:
    """The kernel class for a weight stored with `group_size`, and why."""
    out, k = qw.q.shape
    if qw.act_bits is not None:
        if qw.act_bits != 8 or qw.bits != 8 or group_size is not None:
            raise SlmkitError(f"activation quantization needs 8-bit per-channel weights and 8-bit "
                              f"activations (got W{qw.bits} g{group_size} A{qw.act_bits})")
        return W8A8Linear, "W8A8"
    if qw.bits <= 4:
        g = group_size or k
        if out % INT4_ROWS == 0 and any(g % s == 0 for s in INT4_GROUPS):
            return Int4Linear, "int4"
        return DequantLinear, (f"int4 kernel needs out_features % {INT4_ROWS} == 0 and groups of a "
                               f"multiple of 32 columns (got out={out}, group={g})")
    if group_size is None:
        return Int8Linear, "int8 per-channel"
    return DequantLinear, f"no grouped kernel for {qw.bits}-bit weights (group {group_size})"


def warn_dense(dense: list[tuple[str, str]], total: int) -> None:
    """One warning for the (name, why) linears `make_linear` could not give an integer kernel."""
    if dense:
        reasons = "; ".join(sorted({why for _, why in dense}))
        warnings.warn(f"{len(dense)} of {total} quantized linears run dense (dequantized weights, exact but "
                      f"not faster): {reasons}; e.g. {dense[0][0]}", stacklevel=3)


def make_linear(qw: QuantizedWeight, bias: torch.Tensor | None, name: str = "",
                dense: list | None = None) -> QuantLinear:
    """The fastest module that computes exactly `x @ qw.dequantize().T + bias`. One that has to
    run dense is warned about, or added to `dense` as (name, why) for the caller to sum up."""
    gs = storage_group_size(qw)
    qw = regroup(qw, gs)
    cls, why = pick_kernel(qw, gs)
    if cls is DequantLinear:
        if dense is None:
            warnings.warn(f"{name or 'linear'}: running dense; {why}", stacklevel=2)
        else:
            dense.append((name, why))
    return cls(qw, bias, gs)
