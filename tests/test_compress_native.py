"""slmkit's native int4 kernel (compiled C) against the exact dequantized product, and its
fallbacks: PyTorch's int4 kernel when the library cannot be built or is disabled."""

import copy
import shutil

import pytest
import torch

from slmkit.compress.quantize import native
from slmkit.compress.quantize.kernels import Int4Linear
from slmkit.compress.quantize.rtn import rtn
from slmkit.errors import SlmkitError
from slmkit.models.dtype import cpu_flags

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
