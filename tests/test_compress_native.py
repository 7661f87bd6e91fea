"""slmkit's native int4 kernel (compiled C) against the exact dequantized product, and its
fallbacks: PyTorch's int4 kernel when the library cannot be built or is disabled."""

import copy
import shutil

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.runtime import native
from slmkit.runtime.cpu import cpu_flags
from slmkit.runtime.kernels import Int4Linear
from slmkit.runtime.qweight import rtn

GEN = torch.Generator().manual_seed(0)
CAN_BUILD = {"avx2", "fma"} <= cpu_flags() and shutil.which("cc") is not None
needs_native = pytest.mark.skipif(not CAN_BUILD, reason="needs AVX2/FMA and a C compiler")


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """native.library() re-evaluated under the test's environment, then restored."""
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def layer(bits=4, group=64, out=96, k=256, sym=False):
    w = torch.randn(out, k, generator=GEN) * 0.05
    qw = rtn(w, bits, group, sym)
    return qw, Int4Linear(qw, None, group)


@needs_native
def test_library_builds_where_a_compiler_and_avx2_exist(fresh_library, tmp_path):
    assert native.library() is not None, native.status()
    assert list((tmp_path / "native").glob("int4_native-*.so")), "not built into $SLMKIT_CACHE/native"
    assert not list((tmp_path / "native").glob("tmp*")), "a temporary build file was left behind"


@needs_native
@pytest.mark.parametrize("bits,group,sym", [(4, 64, False), (4, 128, True), (3, 32, False),
                                            (4, None, False)])
def test_decode_rows_match_the_dequantized_product(bits, group, sym):
    qw, lin = layer(bits, group, sym=sym)
    assert lin.kernel.startswith("slmkit native")
    W = qw.dequantize()
    for rows in (1, 2, Int4Linear.NATIVE_ROWS):
        x = torch.randn(rows, 256, generator=GEN)
        x[:, 7] *= 40  # an outlier channel, as real activations have
        ref = x @ W.T
        err = (lin(x) - ref).abs().max() / ref.abs().max()
        assert err < 2e-4, f"rows={rows}: relative error {err:.2e}"


@needs_native
def test_native_decode_is_more_accurate_than_torchs_bf16_kernel(fresh_library, monkeypatch):
    x = torch.randn(1, 256, generator=GEN)
    qw, lin = layer()
    y_native = lin(x)
    monkeypatch.setenv("SLMKIT_NATIVE", "0")
    native.library.cache_clear()
    aten = Int4Linear(qw, None, 64)
    assert aten.kernel.startswith("aten")
    ref = x @ qw.dequantize().T
    assert (y_native - ref).abs().max() < (aten(x) - ref).abs().max() / 4
    with pytest.raises(SlmkitError, match="no longer available"):
        lin(x)  # built for the native kernel, which is now disabled: a clear error


@needs_native
def test_native_layers_deep_copy_and_keep_working():
    qw, lin = layer()
    twin = copy.deepcopy(torch.nn.Sequential(lin))[0]
    x = torch.randn(1, 256, generator=GEN)
    assert torch.equal(twin(x), lin(x))


@needs_native
def test_prefill_dequantizes_exactly():
    qw, lin = layer()
    assert torch.equal(lin.dense_weight(), qw.dequantize())
    assert torch.equal(lin.codes(), qw.q)
    x = torch.randn(3, Int4Linear.NATIVE_ROWS + 1, 256, generator=GEN)
    assert torch.allclose(lin(x), x @ qw.dequantize().T, atol=1e-5, rtol=1e-5)
    assert lin(x.bfloat16()).dtype == torch.bfloat16


def test_disabled_or_unbuildable_falls_back_to_torch(fresh_library, monkeypatch):
    monkeypatch.setenv("SLMKIT_NATIVE", "0")
    assert native.library() is None and "SLMKIT_NATIVE=0" in native.status()
    native.library.cache_clear()
    monkeypatch.setenv("SLMKIT_NATIVE", "1")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert native.library() is None and "no C compiler" in native.status()
    qw, lin = layer()
    assert lin.kernel.startswith("aten")
    x = torch.randn(2, 256, generator=GEN)
    ref = x @ qw.dequantize().T
    assert (lin(x) - ref).abs().max() < 0.01 * ref.abs().max()


def test_broken_compiler_is_reported_not_raised(fresh_library, monkeypatch, tmp_path):
    if not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("needs AVX2/FMA to reach the compile step")
    fake = tmp_path / "badcc"
    fake.write_text("#!/bin/sh\necho 'fatal: no such thing' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert native.library() is None
    assert "build failed" in native.status() and "no such thing" in native.status()


# ---- int8 (the quantized lm_head) ----------------------------------------------------------------

@needs_native
@pytest.mark.parametrize("sym", [True, False])
def test_int8_decode_rows_match_the_dequantized_product(sym):
    from slmkit.runtime.kernels import Int8Linear

    w = torch.randn(200, 256, generator=GEN) * 0.05
    qw = rtn(w, 8, None, sym)
    lin = Int8Linear(qw, torch.randn(200, generator=GEN), None)
    assert lin.kernel.startswith("slmkit native int8")
    W = qw.dequantize()
    for rows in (1, 3, Int8Linear.DECODE_ROWS):
        x = torch.randn(rows, 256, generator=GEN)
        x[:, 3] *= 40
        ref = x @ W.T + lin.bias
        err = (lin(x) - ref).abs().max() / ref.abs().max()
        assert err < 2e-4, f"rows={rows}, sym={sym}: relative error {err:.2e}"
    # the aten path rounds activations to bf16: the native kernel must be clearly closer
    x = torch.randn(1, 256, generator=GEN)
    ref = x @ W.T + lin.bias
    lin._native_ok = False
    err_aten = (lin(x) - ref).abs().max()
    lin._native_ok = True
    assert (lin(x) - ref).abs().max() < err_aten / 4


# ---- shared-input groups (q/k/v, gate/up) ------------------------------------------------------------

class Block(torch.nn.Module):
    """An attention-like block: three projections of one input, plus one of another."""

    def __init__(self, k=256, group=64):
        super().__init__()
        def lin(out):
            return Int4Linear(rtn(torch.randn(out, k, generator=GEN) * 0.05, 4, group, False),
                              torch.randn(out, generator=GEN), group)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = lin(128), lin(64), lin(64), lin(96)

    def forward(self, x, y):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x), self.o_proj(y)


@needs_native
def test_fused_siblings_give_the_unfused_outputs_and_save_the_same_codes():
    from slmkit.runtime.fuse import fuse_shared_inputs

    block = Block()
    twin = copy.deepcopy(block)
    before = {n: (m.codes(), m.scale.clone(), m.zero.clone()) for n, m in block.named_children()}
    site = [[block.q_proj, block.k_proj, block.v_proj]]
    assert fuse_shared_inputs(site) == 1
    assert fuse_shared_inputs(site) == 0, "fusing twice must be a no-op"
    assert block.q_proj._shared is block.v_proj._shared and block.o_proj._shared is None
    for n, m in block.named_children():
        codes, scale, zero = before[n]
        assert torch.equal(m.codes(), codes) and torch.equal(m.scale, scale) and torch.equal(m.zero, zero)
    for rows in (1, 3):
        x, y = torch.randn(1, rows, 256, generator=GEN), torch.randn(1, rows, 256, generator=GEN)
        for got, want in zip(block(x, y), twin(x, y)):
            assert got.shape == want.shape and got.is_contiguous()
            assert torch.allclose(got, want, atol=1e-6, rtol=0)
    # a member asked about another tensor, or twice about the same one, recomputes
    x1, x2 = torch.randn(1, 1, 256, generator=GEN), torch.randn(1, 1, 256, generator=GEN)
    q1 = block.q_proj(x1)
    assert torch.allclose(block.k_proj(x2), twin.k_proj(x2), atol=1e-6, rtol=0)
    assert torch.allclose(block.q_proj(x1), q1, atol=0, rtol=0)
    assert torch.allclose(block.q_proj(x2), twin.q_proj(x2), atol=1e-6, rtol=0)
    # prefill-sized inputs run per layer, on the member's own rows
    x = torch.randn(1, Int4Linear.NATIVE_ROWS + 4, 256, generator=GEN)
    assert torch.allclose(block.v_proj(x), twin.v_proj(x), atol=1e-5, rtol=1e-5)
    # a deep copy keeps working and stays independent of the original
    clone = copy.deepcopy(block)
    assert clone.q_proj._shared is clone.k_proj._shared is not block.q_proj._shared
    assert torch.allclose(clone.k_proj(x1), twin.k_proj(x1), atol=1e-6, rtol=0)


@needs_native
def test_quantized_models_fuse_the_sites_of_the_architecture_table():
    from slmkit.compress.api import quantize
    from slmkit.compress.quantize.config import RTNConfig
    from slmkit.models.arch import get_arch
    from slmkit.models.tiny import tiny_model

    model = quantize(tiny_model("llama", seed=0), RTNConfig(bits=4, group_size=32))
    layers = get_arch(model).decoder_layers(model)
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.q_proj._shared is not None and attn.q_proj._shared is attn.v_proj._shared
        assert mlp.gate_proj._shared is mlp.up_proj._shared is not None
        assert attn.o_proj._shared is None and mlp.down_proj._shared is None
