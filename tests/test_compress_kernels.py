"""Bit packing and the integer-kernel linears against direct float references."""

import warnings

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.runtime.kernels import (
    DequantLinear,
    Int4Linear,
    Int8Linear,
    W8A8Linear,
    make_linear,
    regroup,
    storage_group_size,
)
from slmkit.runtime.pack import pack_int32, packed_words, unpack_int32
from slmkit.runtime.qweight import rtn

GEN = torch.Generator().manual_seed(0)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", [(5, 37), (16, 64), (3, 576)])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack_unpack_round_trip_is_exact(bits, shape, dim):
    codes = torch.randint(0, 2 ** bits, shape, generator=GEN)
    packed = pack_int32(codes, bits, dim)
    assert packed.dtype == torch.int32
    assert packed.shape[dim] == packed_words(shape[dim], bits)
    assert torch.equal(unpack_int32(packed, bits, shape[dim], dim).long(), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packing_matches_compressed_tensors_bytes(bits):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    codes = torch.randint(0, 2 ** bits, (24, 200), generator=GEN)
    signed = (codes - 2 ** (bits - 1)).to(torch.int8)
    assert torch.equal(pack_int32(codes, bits), helpers.pack_to_int32(signed, bits))
    assert torch.equal(pack_int32(codes, bits, 0), helpers.pack_to_int32(signed, bits, packed_dim=0))


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(SlmkitError, match="out of range"):
        pack_int32(torch.tensor([[0, 16]]), 4)
    with pytest.raises(SlmkitError, match="1-8 bit"):
        pack_int32(torch.tensor([[0, 1]]), 9)


def reference(qw, x, bias=None):
    y = x.float() @ qw.dequantize().T
    return y if bias is None else y + bias


CASES = [  # (bits, group_size, symmetric, out, in, expected kernel)
    (4, 32, False, 48, 96, Int4Linear),
    (4, 128, True, 64, 576, Int4Linear),      # 576 = 4.5 groups of 128: stored as groups of 64
    (3, 64, False, 32, 128, Int4Linear),
    (2, None, False, 32, 512, Int4Linear),    # per channel, split into kernel groups of 256
    (8, None, True, 40, 96, Int8Linear),
    (8, None, False, 40, 96, Int8Linear),     # asymmetric: rank-1 zero-point correction
    (6, None, False, 40, 96, Int8Linear),
    (6, 32, False, 40, 96, DequantLinear),    # no grouped 6-bit kernel: dense fallback
    (4, 32, False, 40, 96, DequantLinear),    # out_features not a multiple of 16
]


@pytest.mark.parametrize("bits,group,sym,out,k,cls", CASES)
def test_kernels_compute_the_dequantized_product(bits, group, sym, out, k, cls):
    w = torch.randn(out, k, generator=GEN)
    bias = torch.randn(out, generator=GEN)
    qw = rtn(w, bits, group, sym)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lin = make_linear(qw, bias)
    assert type(lin) is cls
    assert any("running dense" in str(c.message) for c in caught) == (cls is DequantLinear)
    x = torch.randn(3, 5, k, generator=GEN)
    ref = reference(qw, x, bias)
    if cls is Int4Linear:  # the kernel runs in bf16: ~3 significant digits
        assert (lin(x) - ref).abs().max() < 0.01 * ref.abs().max()
        assert lin(x).dtype == torch.float32
    else:
        assert torch.allclose(lin(x), ref, atol=1e-4, rtol=1e-4)
    y16 = lin(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - ref).abs().max() < 0.05 * ref.abs().max()
    assert torch.equal(lin.codes(), qw.q)                     # exact codes for saving
    assert torch.allclose(lin.dense_weight(), qw.dequantize(), atol=1e-6)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("int_mm", [False, True], ids=["int8pack", "int_mm"])
@pytest.mark.parametrize("tokens", [1, 40])
def test_w8a8_is_the_per_token_int8_product(tokens, int_mm):
    w = torch.randn(48, 96, generator=GEN)
    qw = rtn(w, 8, None, True)
    qw.act_bits = 8
    lin = make_linear(qw, None)
    assert type(lin) is W8A8Linear
    lin.use_int_mm = int_mm                  # both paths run anywhere; speed is what differs
    x = torch.randn(tokens, 96, generator=GEN)
    x[:, 5] *= 30                            # an outlier channel, as in LLMs
    xs = x.abs().amax(-1, keepdim=True) / 127
    per_token = (torch.round(x / xs).clamp(-127, 127) * xs) @ qw.dequantize().T
    weight_only = x @ qw.dequantize().T
    y = lin(x)
    assert rel(y, per_token) < (1e-6 if int_mm else 5e-3)   # int8pack rounds its output to bf16
    assert rel(y, weight_only) > 4 * rel(y, per_token)       # activations really were quantized


def test_w8a8_refuses_asymmetric_weights():
    asym = rtn(torch.randn(48, 96, generator=GEN), 8, None, False)
    asym.act_bits = 8
    with pytest.raises(SlmkitError, match="symmetric"):
        make_linear(asym, None)


def test_partial_last_group_is_regrouped_exactly():
    w = torch.randn(32, 576, generator=GEN)
    qw = rtn(w, 4, 128, False)                 # groups of 128, 128, 128, 128, 64
    assert qw.scale.shape[1] == 5
    assert storage_group_size(qw) == 64
    re = regroup(qw, 64)
    assert re.scale.shape[1] == 9
    assert torch.equal(re.dequantize(), qw.dequantize())


def test_noncontiguous_groups_are_refused_with_a_fix():
    qw = rtn(torch.randn(16, 64, generator=GEN), 4, 32)
    qw.g_idx = qw.g_idx[torch.randperm(64, generator=GEN)]
    with pytest.raises(SlmkitError, match="static_groups"):
        storage_group_size(qw)


@pytest.mark.parametrize("sym", [True, False])
def test_int8_float32_inputs_decode_in_bf16_and_prefill_exactly_in_chunks(sym, monkeypatch):
    """float32 activations never reach the kernel's scalar float32 path: a few rows go through it
    in bf16, many rows multiply the dequantized weight exactly, a block of rows at a time."""
    qw = rtn(torch.randn(40, 96, generator=GEN), 8, None, sym)
    lin = make_linear(qw, None)
    monkeypatch.setattr(Int8Linear, "CHUNK", 16)          # 40 rows -> blocks of 16, 16, 8
    many = torch.randn(Int8Linear.DECODE_ROWS + 1, 96, generator=GEN)
    assert torch.allclose(lin(many), reference(qw, many), atol=1e-5, rtol=1e-5)
    few = torch.randn(2, 96, generator=GEN)
    ref = reference(qw, few)
    err = (lin(few) - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.01 and lin(few).dtype == torch.float32
