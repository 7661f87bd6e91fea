"""Few-token float32 linears (slmkit.models.narrow): same outputs as nn.Linear, scoped switch."""

import pytest
import torch

from slmkit.models.narrow import narrow_linears
from slmkit.models.tiny import tiny_model
from slmkit.runtime import native
from slmkit.runtime.cpu import has_native_bf16

NATIVE = [False, pytest.param(True, marks=pytest.mark.skipif(
    native.library() is None, reason=f"no native kernel: {native.status()}"))]


@pytest.mark.parametrize("use_native", NATIVE)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])   # qwen2: q/k/v carry a bias
@pytest.mark.parametrize("tokens", [1, 2, 5, 16, 17])
def test_same_logits_as_plain_linears(arch, tokens, use_native):
    m = tiny_model(arch, seed=0).float().eval()
    ids = torch.randint(0, m.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = m(ids).logits
        with narrow_linears(m, min_weights=0, native=use_native) as n:
            got = m(ids).logits
    assert n == sum(isinstance(x, torch.nn.Linear) for x in m.modules())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(native.library() is None, reason="no native kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_product_for_every_token_count(dtype):
    """Every pass split of the kernel (1-6 rows in one pass, 7-16 in two or three even ones;
    weight rows in pairs plus an odd last one)."""
    from slmkit.models.narrow import native_mm

    g = torch.Generator().manual_seed(3)
    w = torch.randn(37, 64, generator=g).to(dtype)
    for m in range(1, 17):
        x = torch.randn(m, 64, generator=g)
        ref = x @ w.float().T
        got = native_mm(native.library(), x, w)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=f"{m} rows")


@pytest.mark.skipif(native.library() is None, reason="no native kernel")
@pytest.mark.parametrize("tokens", [1, 3, 16])
def test_bf16_weights_through_the_native_kernel(tokens):
    m = tiny_model("qwen2", seed=0).to(torch.bfloat16).eval()
    ids = torch.randint(0, m.config.vocab_size, (2, tokens), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = m(ids).logits.float()
        with narrow_linears(m, min_weights=0, native=True, bf16=True) as n:
            got = m(ids).logits.float()
        with narrow_linears(m, min_weights=0, native=True) as auto:  # the CPU decides
            pass
    assert n > 0 and auto == (0 if has_native_bf16() else n)
    # both accumulate in float32 and round to bf16; only the summation order differs
    assert (got - ref).abs().max() <= 0.05 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_the_switch_is_scoped_and_routes_few_tokens_through_mm(monkeypatch):
    m = tiny_model("llama", seed=0).float().eval()
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a: calls.append(a[0].shape) or real_mm(*a))
    ids = torch.ones(1, 4, dtype=torch.long)
    with torch.inference_mode():
        with narrow_linears(m, min_weights=0, native=False):
            m(ids)
        inside = len(calls)
        m(ids)
    assert inside > 0 and len(calls) == inside           # only inside the block
    assert all("forward" not in x.__dict__ for x in m.modules())


def test_bf16_and_small_matrices_are_left_alone():
    m = tiny_model("llama", seed=0).float()
    with narrow_linears(m) as n:                          # tiny matrices: under MIN_WEIGHTS
        assert n == 0
    with narrow_linears(m.to(torch.bfloat16), min_weights=0, native=False) as n:
        assert n == 0                                     # torch.mm gains nothing in bf16


def test_a_module_with_its_own_forward_is_skipped():
    m = tiny_model("llama", seed=0).float()
    lin = m.lm_head
    own = lin.forward
    lin.forward = own                                     # e.g. an accelerate hook
    with narrow_linears(m, min_weights=0):
        assert lin.forward is own
    assert lin.forward is own
