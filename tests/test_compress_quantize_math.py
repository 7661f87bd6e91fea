"""RTN and GPTQ math against direct checks (no models)."""

import pytest
import torch
from layer_inputs import correlated_inputs, gen

from slmkit.compress.quantize.gptq import gptq
from slmkit.compress.quantize.grid_search import search_grid
from slmkit.errors import SlmkitError
from slmkit.runtime.qweight import grid, quantize_column, rtn


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, 32, 48])
def test_rtn_error_is_at_most_half_a_step(bits, symmetric, group_size):
    w = torch.randn(16, 96, generator=gen(bits))
    qw = rtn(w, bits, group_size, symmetric)
    assert qw.q.dtype == torch.uint8 and int(qw.q.max()) <= 2 ** bits - 1
    step = qw.scale[:, qw.g_idx]
    err = (qw.dequantize() - w).abs()
    # inside the grid's range the error is <= step/2; symmetric grids clip only the most negative code
    assert (err <= step / 2 + 1e-6).all()


def test_rtn_is_exact_on_weights_already_on_the_grid():
    torch.manual_seed(0)
    scale = torch.rand(8, 3) + 0.1
    codes = torch.randint(0, 16, (8, 96)).float()
    zero = torch.full((8, 3), 7.0)
    g_idx = torch.arange(96) // 32
    codes[:, ::32] = 0   # every group holds both ends of the grid, so RTN finds the same grid
    codes[:, 1::32] = 15
    w = (codes - zero[:, g_idx]) * scale[:, g_idx]
    qw = rtn(w, 4, 32, symmetric=False)
    torch.testing.assert_close(qw.dequantize(), w, rtol=0, atol=1e-5)


def test_partial_last_group_when_group_size_does_not_divide_in_features():
    w = torch.randn(4, 576, generator=gen(1))  # SmolLM2's hidden size, g128 leaves a 64-column tail
    qw = rtn(w, 4, 128)
    assert qw.scale.shape == (4, 5) and int(qw.g_idx[-1]) == 4 and (qw.g_idx == 4).sum() == 64
    assert (qw.dequantize() - w).abs().max() < qw.scale.max()


@pytest.mark.parametrize("bits", range(2, 9))
def test_grid_zero_points_symmetric_fixed_asymmetric_spanning_the_row(bits):
    """Symmetric: zero = 2^(bits-1) exactly (the signed convention checkpoints rely on: a symmetric
    scheme stores no zero point) and scale = max|w| / (2^(bits-1) - 1), so max|w| is a grid point.
    Asymmetric: an integer zero in [0, 2^bits - 1], so w = 0 dequantizes to exactly 0, and the
    grid's ends lie within half a step of the row's min(w, 0) and max(w, 0)."""
    w = torch.randn(16, 64, generator=gen(30 + bits))
    half = 2 ** (bits - 1)
    s, z = grid(w, bits, symmetric=True)
    assert (z == half).all(), f"symmetric zero points {z.unique().tolist()}, expected {half}"
    amax = w.abs().amax(1)
    torch.testing.assert_close(s, amax / (half - 1))
    q = quantize_column(w, s[:, None], z[:, None], bits)
    top = q.gather(1, w.abs().argmax(1, keepdim=True))[:, 0]
    assert ((top - z).abs() == half - 1).all()
    torch.testing.assert_close((top - z) * s, w.gather(1, w.abs().argmax(1, keepdim=True))[:, 0])

    maxq = 2 ** bits - 1
    s, z = grid(w, bits, symmetric=False)
    assert torch.equal(z, z.round()) and (z >= 0).all() and (z <= maxq).all()
    assert (quantize_column(torch.zeros(16), s, z, bits) == z).all()   # 0 -> code z -> 0.0
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    assert (((0 - z) * s - lo).abs() <= s / 2 + 1e-6).all()
    assert (((maxq - z) * s - hi).abs() <= s / 2 + 1e-6).all()


@pytest.mark.parametrize("bits, group_size", [(1, 128), (9, 128), (4, 0), (4, -5)])
def test_out_of_range_settings_are_refused(bits, group_size):
    with pytest.raises(SlmkitError):
        rtn(torch.randn(2, 8), bits, group_size)



@pytest.mark.parametrize("act_order, static_groups", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("group_size", [None, 32, 40])
@pytest.mark.parametrize("clip_search", [False, True])
def test_gptq_output_error_is_below_rtn_on_correlated_inputs(act_order, static_groups, group_size,
                                                             clip_search):
    x = correlated_inputs()
    w = torch.randn(64, 96, generator=gen(3))
    H = 2 * x.T @ x / x.shape[0]
    ref = x @ w.T
    q_rtn = rtn(w, 4, group_size)
    q_gptq = gptq(w, H, 4, group_size, act_order=act_order, static_groups=static_groups, block_size=32,
                  clip_search=clip_search)
    err_rtn = (x @ q_rtn.dequantize().T - ref).pow(2).mean()
    err_gptq = (x @ q_gptq.dequantize().T - ref).pow(2).mean()
    assert err_gptq < 0.8 * err_rtn
    # the codes really are a grid: dequantize() equals the stored codes mapped through scale/zero
    assert q_gptq.q.dtype == torch.uint8 and int(q_gptq.q.max()) <= 15
    if static_groups or not act_order:
        assert torch.equal(q_gptq.g_idx, torch.arange(96) // (group_size or 96))


def test_clip_floor_keeps_the_clip_search_from_clipping_a_quiet_inputs_outlier_weights():
    """Column 0 holds each row's largest weight but its input is nearly silent in calibration:
    weighed by diag H alone the clip search clips those weights for free; with a floor it does
    not, and on inputs where column 0 fires the output error is lower."""
    x = correlated_inputs()
    x[:, 0] *= 1e-3
    w = torch.randn(64, 96, generator=gen(11))
    w[:, 0] = 4 * w.abs().amax(1)
    H = 2 * x.T @ x / x.shape[0]
    kw = dict(act_order=True, static_groups=True, block_size=32, clip_search=True)
    bare, floored = (gptq(w, H, 4, 32, clip_floor=f, **kw) for f in (0.0, 1.0))
    col0 = [(q.dequantize() - w)[:, 0].abs().mean() for q in (bare, floored)]
    assert col0[1] < 0.5 * col0[0]
    awake = correlated_inputs()          # column 0 as active as the rest
    out_err = [(awake @ (q.dequantize() - w).T).pow(2).mean() for q in (bare, floored)]
    assert out_err[1] < out_err[0]
    with pytest.raises(SlmkitError, match="clip_floor"):
        gptq(w, H, 4, 32, clip_floor=-1.0, **kw)


@pytest.mark.parametrize("symmetric", [False, True])
def test_search_grid_never_loses_to_min_max_and_clips_outliers(symmetric):
    w = torch.randn(32, 64, generator=gen(5)) ** 3  # heavy tails: min/max wastes grid on a few
    importance = torch.rand(64, generator=gen(6)) + 0.1

    def weighted_error(s, z):
        deq = (quantize_column(w, s[:, None], z[:, None], 4) - z[:, None]) * s[:, None]
        return (w - deq).square() @ importance

    s0, z0 = grid(w, 4, symmetric)
    s1, z1 = search_grid(w, 4, symmetric, importance)
    e0, e1 = weighted_error(s0, z0), weighted_error(s1, z1)
    assert (e1 <= e0 + 1e-6).all()           # per row: the search includes the min/max grid
    assert e1.sum() < 0.98 * e0.sum()        # and the outliers make clipping pay
    assert (s1 <= s0 + 1e-7).all()           # ranges only shrink
    # an important outlier is kept: clipping it would cost more than the finer grid saves
    w[:, 3] = 2 * w.abs().amax(dim=1)
    importance[3] = 1e6

    def outlier_error(s, z):
        deq = (quantize_column(w[:, 3], s, z, 4) - z) * s
        return (w[:, 3] - deq).abs()

    e_kept, e_minmax = outlier_error(*search_grid(w, 4, symmetric, importance)), outlier_error(*grid(w, 4, symmetric))
    assert (e_kept <= e_minmax + 1e-6).all()


def test_gptq_handles_dead_inputs_and_rejects_bad_hessians():
    x = correlated_inputs()
    x[:, 5] = 0  # a dead input channel: its weights are zeroed, not NaN
    w = torch.randn(8, 96, generator=gen(4))
    qw = gptq(w, x.T @ x, 4, 32)
    assert torch.isfinite(qw.dequantize()).all() and (qw.dequantize()[:, 5] == 0).all()
    with pytest.raises(SlmkitError, match="non-finite"):
        gptq(w, torch.full((96, 96), float("nan")), 4, 32)
    with pytest.raises(SlmkitError, match="96 input columns"):
        gptq(w, torch.eye(10), 4, 32)
    with pytest.raises(SlmkitError, match="dampening"):
        gptq(w, x.T @ x, 4, 32, damp=0)


def well_conditioned_hessian(d=256, n=1024, seed=20):
    """2 X^T X / n of mildly correlated inputs (condition number ~16)."""
    g = gen(seed)
    x = torch.randn(n, d, generator=g) @ (torch.eye(d) + 0.3 * torch.randn(d, d, generator=g) / d ** 0.5)
    return 2 * x.T @ x / n


@pytest.mark.parametrize("act_order, static_groups, group_size, symmetric", [
    (False, False, None, False), (False, False, 32, False), (True, False, None, True),
    (True, False, 32, False), (True, True, 64, True)])
def test_gptq_result_does_not_depend_on_block_size(act_order, static_groups, group_size, symmetric):
    """Lazy block updates are only a reordering of the same arithmetic: each block's error must
    still reach every later block (W[:, i2:] -= Err @ Hinv[i1:i2, i2:]), so 8-, 32- and 128-column
    blocks over 256 columns give the same codes and grids as one another."""
    H = well_conditioned_hessian()
    w = torch.randn(32, 256, generator=gen(21))
    runs = {b: gptq(w, H, 4, group_size, symmetric=symmetric, act_order=act_order,
                    static_groups=static_groups, block_size=b) for b in (8, 32, 128)}
    ref = runs[128]
    ref_w = ref.dequantize()
    for b in (8, 32):
        got = runs[b]
        n_diff = int((got.q != ref.q).sum())
        assert n_diff == 0, f"block_size={b}: {n_diff} of {got.q.numel()} codes differ from block_size=128"
        assert torch.equal(got.g_idx, ref.g_idx)
        rel = float((got.dequantize() - ref_w).norm() / ref_w.norm())
        assert rel < 1e-5, f"block_size={b}: dequantized weights differ from block_size=128 by {rel:.2e} (relative)"
        torch.testing.assert_close(got.scale, ref.scale, rtol=1e-5, atol=0)
        torch.testing.assert_close(got.zero, ref.zero, rtol=0, atol=0)
