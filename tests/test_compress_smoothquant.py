"""SmoothQuant: exact smoothing, the scale formula, and simulated W8A8 on every architecture."""

import pytest
import torch

from slmkit.compress.quantize.smoothquant import (SmoothQuantConfig, apply_smoothquant,
                                                  fake_quant_activations, quantize_w8, smooth,
                                                  smooth_scales)
from slmkit.compress.smooth import ATTN_IN, MLP_IN, ActivationStats, scale_groups
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.models.tiny import TINY_CONFIGS, tiny_model

from smooth_models import OUTLIERS, n_layers, with_outliers

G = torch.Generator().manual_seed(1)
CALIB = torch.randint(3, 500, (8, 64), generator=G)
EVAL = torch.randint(3, 500, (4, 64), generator=G)


def logits(model, ids=EVAL):
    with torch.no_grad():
        return model(ids).logits



def simulate_w8a8(model, names):
    """Per-token int8 activations at the input of every quantized linear."""
    for t in all_targets(model):
        if t.name in names:
            t.module.register_forward_pre_hook(lambda m, args: (fake_quant_activations(args[0]), *args[1:]))
    return model


def norm_fed_inputs(model, ids=EVAL):
    """Per layer, max |x| per channel at the attention and MLP inputs: [(attn [in], mlp [in])]."""
    groups = [g for i in range(n_layers(model)) for g in scale_groups(model, i) if g.site in (ATTN_IN, MLP_IN)]
    with ActivationStats({f"{g.linears[0].name}": g.linears[0].module for g in groups}) as st:
        logits(model, ids)
    return {k: v.max_abs for k, v in st.stats.items()}


# ---- math ------------------------------------------------------------------------------------

def test_smooth_scales_follow_the_formula_and_balance_the_extremes():
    act = torch.rand(32, generator=G) * 10 + 0.1
    act[5] = 0.0  # a dead channel: floored, never zero or inf
    ws = [torch.randn(16, 32, generator=G), torch.randn(8, 32, generator=G)]
    w_max = torch.cat(ws).abs().amax(0)
    s = smooth_scales(act, ws, 0.5)
    expected = act.clamp(min=1e-5).sqrt() / w_max.sqrt()
    torch.testing.assert_close(s, expected.clamp(min=1e-5))
    # alpha = 0.5 makes max|x/s| == max|W s| per channel (the paper's balance point)
    torch.testing.assert_close((act / s)[act > 0], (w_max * s)[act > 0])
    # alpha = 1: activations flattened to max 1; alpha = 0: weight columns flattened to max 1
    torch.testing.assert_close((act / smooth_scales(act, ws, 1.0))[act > 0], torch.ones(31))
    torch.testing.assert_close(w_max * smooth_scales(act, ws, 0.0), torch.ones(32))


@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quant_activations_is_per_token_symmetric(bits):
    x = torch.randn(3, 10, 64, generator=G) * torch.rand(3, 10, 1, generator=G) * 5
    x[0, 0] = 0  # an all-zero token stays zero
    y = fake_quant_activations(x, bits)
    qmax = 2 ** (bits - 1) - 1
    step = x.abs().amax(-1, keepdim=True) / qmax                    # [3, 10, 1]
    assert (y - x).abs().le(step / 2 + 1e-6).all() and torch.equal(y[0, 0], x[0, 0])
    codes = (y / torch.where(step > 0, step, 1)).round()
    assert codes.abs().max() <= qmax and codes.unique().numel() <= 2 * qmax + 1
    assert y.dtype == x.dtype and y.shape == x.shape


def test_quantize_w8_is_int8_symmetric_per_output_channel():
    w = torch.randn(16, 40, generator=G)
    qw = quantize_w8(w)
    assert (qw.bits, qw.group_size, qw.act_bits) == (8, None, 8)
    assert qw.scale.shape == (16, 1) and (qw.zero == 128).all() and qw.q.dtype == torch.uint8
    torch.testing.assert_close(qw.scale[:, 0], w.abs().amax(1) / 127)
    assert (qw.dequantize() - w).abs().max() <= qw.scale.max() / 2 + 1e-7


# ---- models ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_smoothing_alone_keeps_logits_and_flattens_outliers(model_type):
    model = with_outliers(tiny_model(model_type, seed=0))
    ref, before = logits(model), norm_fed_inputs(model)
    scales = smooth(model, SmoothQuantConfig(alpha=0.5), CALIB)
    assert len(scales) == 2 * n_layers(model)
    torch.testing.assert_close(logits(model), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    after = norm_fed_inputs(model)
    for name in before:  # the injected outlier channels no longer dominate the activation range
        ratio_before = before[name][OUTLIERS].min() / before[name].median()
        ratio_after = after[name][OUTLIERS].min() / after[name].median()
        assert ratio_before > 10 and ratio_after < 0.5 * ratio_before, name


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_smoothing_lowers_w8a8_error_with_activation_outliers(model_type):
    ref = logits(with_outliers(tiny_model(model_type, seed=0)))

    def w8a8_error(alpha):
        model = with_outliers(tiny_model(model_type, seed=0))
        if alpha is None:  # the same W8A8 grids without smoothing
            store = {}
            for t in all_targets(model):
                store[t.name] = quantize_w8(t.weight())
                t.set_weight(store[t.name].dequantize())
        else:
            store = apply_smoothquant(model, SmoothQuantConfig(alpha=alpha), CALIB)
        return (logits(simulate_w8a8(model, set(store))) - ref).pow(2).mean().item()

    plain, smoothed = w8a8_error(None), w8a8_error(0.5)
    print(f"{model_type}: W8A8 logits MSE plain {plain:.3g} smoothed {smoothed:.3g} ratio {smoothed / plain:.2f}")
    assert smoothed < 0.7 * plain


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gpt2", "opt"])
def test_smoothquant_stores_int8_weights_for_every_target(model_type):
    model = tiny_model(model_type, seed=2)
    ref = logits(model)
    store = apply_smoothquant(model, SmoothQuantConfig(), CALIB[:4, :32])
    targets = all_targets(model)
    assert set(store) == {t.name for t in targets}
    for t in targets:
        qw = store[t.name]
        assert (qw.bits, qw.group_size, qw.act_bits) == (8, None, 8)
        assert torch.equal(t.weight(), qw.dequantize())
    assert (logits(model) - ref).pow(2).mean() < 1e-3 * ref.pow(2).mean()


def test_skip_list_is_respected():
    original, model = tiny_model("llama", seed=3), tiny_model("llama", seed=3)
    store = apply_smoothquant(model, SmoothQuantConfig(skip=["k", "down"]), CALIB[:4, :32])
    assert {t.role for t in all_targets(model) if t.name in store} == {"q", "v", "o", "gate", "up"}
    outs = []
    for m in (original, model):  # layer 0's skipped k: columns smoothed, outputs still exact
        t = next(t for t in all_targets(m) if t.role == "k" and t.layer == 0)
        h = t.module.register_forward_hook(lambda mod, a, out: outs.append(out))
        logits(m)
        h.remove()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    downs = [(a, b) for a, b in zip(all_targets(original), all_targets(model)) if a.role == "down"]
    assert all(torch.equal(a.weight(), b.weight()) for a, b in downs)  # down's input is not smoothed


@pytest.mark.parametrize("bad", [dict(alpha=-0.1), dict(alpha=1.5), dict(alpha="0.5"),
                                 dict(min_scale=0), dict(batch_size=0)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(SlmkitError):
        apply_smoothquant(tiny_model("llama"), SmoothQuantConfig(**bad), CALIB)


def test_calibration_is_required():
    with pytest.raises(SlmkitError, match="calibration"):
        smooth(tiny_model("llama"), SmoothQuantConfig(), None)
