"""Exact scale folding (compress/smooth.py) on every architecture, and AWQ: math and models."""

import pytest
import torch
from smooth_models import CALIB, logits, n_layers, with_outliers

from slmkit.compress.api import apply_rtn
from slmkit.compress.quantize.awq import (
    AWQConfig,
    apply_awq,
    awq_scales,
    fake_quantize,
    output_mse,
    search_scale,
)
from slmkit.compress.quantize.config import RTNConfig
from slmkit.compress.smooth import (
    ActivationStats,
    ScaleGroup,
    fold_scales,
    norm_kind,
    scale_groups,
    tie_channels,
)
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.models import get_arch
from slmkit.models.tiny import TINY_CONFIGS, tiny_model
from slmkit.runtime.qweight import rtn

SMALL = CALIB[:4, :32]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- folding ---------------------------------------------------------------------------------

# every architecture (grouped-query attention in most: v -> o scales tied across the query heads
# sharing a kv head), plus variants without GQA so untied v -> o folding is exercised on separate
# v (llama, qwen2: biased v, gemma3: 1 + weight norms) and on a fused qkv (phi3)
FOLD_CASES = [(t, {}) for t in TINY_CONFIGS] + [
    (t, {"num_key_value_heads": 4}) for t in ("llama", "qwen2", "gemma3_text", "phi3")]


@pytest.mark.parametrize("model_type, overrides", FOLD_CASES,
                         ids=[f"{t}{'-mha' if o else ''}" for t, o in FOLD_CASES])
def test_folding_random_scales_into_every_group_keeps_logits(model_type, overrides):
    model = tiny_model(model_type, seed=1, **overrides)
    with torch.no_grad():  # random norm weights and biases, so a missed bias or offset shows up
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen(p.numel())))
    ref = logits(model)
    spec, folded = get_arch(model), []
    for i in range(n_layers(model)):
        groups = scale_groups(model, i)
        layer = spec.decoder_layers(model)[i]
        # every linear of the layer reads exactly one group's input
        assert sorted(t.role for g in groups for t in g.linears) == sorted(spec.linears(layer))
        for g in groups:
            if g.prev is None:
                assert g.why_not
                continue
            before = g.linears[0].weight().clone()
            s = torch.exp(torch.randn(g.in_features, generator=gen(i)))  # 0.05 .. 20
            fold_scales(g, tie_channels(s, g.prev.tie))
            assert not torch.allclose(g.linears[0].weight(), before)
            folded.append(g.site)
    out = logits(model)
    assert ref.std() > 0.05  # logits that move with the weights
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # what can fold where: v -> o always (tied under GQA), up -> down unless a GELU MLP
    assert folded.count("attn_out") == n_layers(model)
    assert folded.count("mlp_out") == (0 if model_type == "gpt2" else n_layers(model))
    assert folded.count("attn_in") == folded.count("mlp_in") == n_layers(model)


def test_folding_refuses_unknown_norms_bad_scales_and_unfoldable_groups():
    class WeirdNorm(torch.nn.Module):
        weight = torch.nn.Parameter(torch.ones(4))
    with pytest.raises(SlmkitError, match="WeirdNorm"):
        norm_kind(WeirdNorm())
    with pytest.raises(SlmkitError, match="no affine"):
        norm_kind(torch.nn.LayerNorm(4, elementwise_affine=False))
    model = tiny_model("llama")
    attn_in, attn_out = scale_groups(model, 0)[:2]
    for bad in (-torch.ones(64), torch.ones(32), torch.full((64,), float("inf"))):
        with pytest.raises(SlmkitError, match="positive"):
            fold_scales(attn_in, bad)
    assert attn_out.prev.tie is not None  # tiny llama: 4 query heads, 2 kv heads
    with pytest.raises(SlmkitError, match="share a kv head"):
        fold_scales(attn_out, torch.exp(torch.randn(64, generator=gen(3))))
    with pytest.raises(SlmkitError, match="cannot absorb"):
        fold_scales(ScaleGroup("x", attn_in.linears, None, "why"), torch.ones(64))


def test_activation_stats_match_direct_computation():
    lin = torch.nn.Linear(6, 3)
    xs = [torch.randn(2, 5, 6, generator=gen(k)) * torch.arange(1, 7) for k in range(3)]
    with ActivationStats({"a": lin}, gram=True) as st:
        for x in xs:
            lin(x)
    flat = torch.cat([x.reshape(-1, 6) for x in xs])              # [30, 6]
    s = st.stats["a"]
    torch.testing.assert_close(s.mean_abs, flat.abs().mean(0))
    torch.testing.assert_close(s.max_abs, flat.abs().amax(0))
    torch.testing.assert_close(s.gram, flat.T @ flat / 30)
    assert s.tokens == 30
    assert not lin._forward_pre_hooks  # hooks removed
    with ActivationStats({"a": lin}) as st:
        lin(xs[0])
    with pytest.raises(SlmkitError, match="gram=True"):
        st.stats["a"].gram


# ---- AWQ math --------------------------------------------------------------------------------

@pytest.mark.parametrize("group_size", [None, 32, 40])
@pytest.mark.parametrize("symmetric", [False, True])
def test_fake_quantize_equals_rtn(group_size, symmetric):
    w = torch.randn(12, 96, generator=gen(1))
    expected = rtn(w, 4, group_size, symmetric).dequantize()
    torch.testing.assert_close(fake_quantize(w, 4, group_size, symmetric), expected)


def outlier_inputs(n=256, d=96, seed=0):
    x = torch.randn(n, d, generator=gen(seed))
    x[:, [5, 50, 70]] *= 25  # salient channels
    return x


def test_output_mse_from_the_gram_matrix_equals_the_direct_one():
    x, dw = outlier_inputs(), torch.randn(24, 96, generator=gen(5))
    torch.testing.assert_close(output_mse(dw, x.T @ x / len(x)), (x @ dw.T).pow(2).mean(), rtol=1e-4, atol=0)


def test_search_scale_never_loses_to_rtn_and_wins_on_salient_channels():
    x, w = outlier_inputs(), torch.randn(48, 96, generator=gen(3))
    s, ratio, errors = search_scale(x.abs().mean(0), x.T @ x / len(x), w, 4, 32, False, n_grid=20)
    ref = x @ w.T
    rtn_err = (x @ rtn(w, 4, 32).dequantize().T - ref).pow(2).mean().item()
    assert errors[0] == pytest.approx(rtn_err, rel=1e-4)  # r = 0 is plain RTN
    assert min(errors) == errors[round(ratio * 20)] and 0 < ratio < 1
    awq_err = (x @ (fake_quantize(w * s, 4, 32, False) / s).T - ref).pow(2).mean().item()
    assert awq_err == pytest.approx(min(errors), rel=1e-4) and awq_err < 0.6 * rtn_err
    assert s[[5, 50, 70]].min() > s.median()  # salient channels scaled up


def test_search_scale_scores_each_candidate_by_its_output_mse_or_the_given_error():
    """Without `error`, candidate i's error is the output MSE of the dequantized w s_i / s_i on the
    tokens, s_i = mean|x|^(i / n_grid); with `error`, the search scores and picks by it."""
    x, w = outlier_inputs(), torch.randn(48, 96, generator=gen(3))
    gram = x.T @ x / len(x)
    _, _, errors = search_scale(x.abs().mean(0), gram, w, 4, 32, False, n_grid=10)
    for i in range(10):
        s = awq_scales(x.abs().mean(0), i / 10)
        direct = (x @ (fake_quantize(w * s, 4, 32, False) / s - w).T).pow(2).mean()
        assert errors[i] == pytest.approx(direct.item(), rel=1e-4)
    row7 = x @ w[7]                                               # only row 7's output error counts
    s, ratio, errs = search_scale(x.abs().mean(0), None, w, 4, 32, False, n_grid=10,
                                  error=lambda wq: (x @ wq[7] - row7).pow(2).mean().item())
    assert errs[round(ratio * 10)] == min(errs) and errs != pytest.approx(errors)
    assert torch.equal(s, awq_scales(x.abs().mean(0), ratio))


# ---- AWQ on models ---------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_awq_beats_rtn_with_activation_outliers(model_type):
    """W4 g32, same grid: logits MSE vs the float model (held-out ids) lower with AWQ's output-MSE
    objective (the loss objective's own test is in test_compress_awq_loss.py)."""
    rtn_err, awq_err = rtn_and_awq_errors(lambda: with_outliers(tiny_model(model_type, seed=0)),
                                          AWQConfig(bits=4, group_size=32, scale_objective="linear"))
    print(f"{model_type}: logits MSE rtn {rtn_err:.3g} awq {awq_err:.3g} ratio {awq_err / rtn_err:.2f}")
    assert awq_err < 0.85 * rtn_err  # 0.37-0.82 across the tiny architectures (gemma3_text 0.82)


def rtn_and_awq_errors(make_model, awq_cfg: AWQConfig) -> tuple[float, float]:
    """Logits MSE against the float model made by `make_model`, for RTN W4 g32 and for `awq_cfg`."""
    ref = logits(make_model())

    def error(apply):
        model = make_model()
        apply(model)
        return (logits(model) - ref).pow(2).mean().item()

    return (error(lambda m: apply_rtn(m, RTNConfig(bits=4, group_size=32))),
            error(lambda m: apply_awq(m, awq_cfg, CALIB)))


def test_tie_channels_averages_over_the_query_heads_sharing_a_kv_head():
    model = tiny_model("llama")  # 4 query heads of 16 dims, 2 kv heads
    tie = scale_groups(model, 0)[1].prev.tie
    assert tie.tolist() == [h // 2 * 16 + d for h in range(4) for d in range(16)]  # repeat_kv's order
    v = torch.arange(64.0)
    assert tie_channels(v, tie)[:16].tolist() == [8.0 + d for d in range(16)]  # mean of heads 0, 1
    assert tie_channels(v, None) is v


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text"])
def test_awq_scales_o_under_grouped_query_attention(model_type):
    """Outlier channels in v's output (so in o's input, for every query head of the kv head): AWQ
    finds a tied scale for o (AutoAWQ skips this site under GQA) and beats RTN clearly."""
    def v_outliers(model):
        for i in range(n_layers(model)):
            g = scale_groups(model, i)[1]
            s = torch.ones(g.in_features)
            s[(g.prev.tie % 16) == 5] = 1 / 30   # channel 5 of every head 30x larger
            fold_scales(g, tie_channels(s, g.prev.tie))
        return model

    rtn_err, awq_err = rtn_and_awq_errors(lambda: v_outliers(tiny_model(model_type, seed=0)),
                                          AWQConfig(bits=4, group_size=32, scale_objective="linear"))
    print(f"{model_type}: logits MSE rtn {rtn_err:.3g} awq {awq_err:.3g} ratio {awq_err / rtn_err:.2f}")
    assert awq_err < 0.5 * rtn_err


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_awq_quantizes_every_target_onto_its_grid(model_type):
    model = tiny_model(model_type, seed=2)
    ref = logits(model)
    store = apply_awq(model, AWQConfig(bits=3, group_size=16, n_grid=8), SMALL)
    targets = all_targets(model)
    assert set(store) == {t.name for t in targets}
    for t in targets:
        qw = store[t.name]
        assert qw.bits == 3 and qw.group_size == 16 and int(qw.q.max()) <= 7
        assert torch.equal(t.weight(), qw.dequantize())
    # still the same model (a folding mistake gives errors of the order of the logits themselves)
    assert (logits(model) - ref).pow(2).mean() < 0.3 * ref.pow(2).mean()


def test_awq_records_what_its_scale_search_chose_at_every_site():
    """quantize() keeps AWQ's per-site choices in the step record (saved into slmkit.json): every
    absorbable site of every layer, an exponent on the grid, and an error at most plain RTN's (r = 0
    is a candidate); with outlier channels the scale helps somewhere."""
    from slmkit.compress import quantize

    model = with_outliers(tiny_model("llama", seed=0))
    quantize(model, AWQConfig(bits=4, group_size=32, n_grid=5, scale_objective="linear"), CALIB,
             pack_weights=False)
    step = model._slmkit_steps[-1]
    absorbable = [(i, g.site) for i in range(n_layers(model)) for g in scale_groups(model, i) if g.prev]
    assert [(r["layer"], r["site"]) for r in step["sites"]] == absorbable
    for r in step["sites"]:
        assert set(r) == {"layer", "site", "objective", "ratio", "error_vs_rtn"} and r["objective"] == "linear"
        assert r["ratio"] in [i / 5 for i in range(5)] and r["error_vs_rtn"] <= 1.0
    assert min(r["error_vs_rtn"] for r in step["sites"]) < 0.9
    assert not hasattr(model, "_slmkit_quantize_report")


@pytest.mark.parametrize("model_type, skip_role", [("llama", "k"), ("opt", "q")])
def test_awq_skip_list_keeps_skipped_linears_exact(model_type, skip_role):
    """A skipped linear is not quantized; when it shares its input with quantized ones its columns
    are scaled, but its outputs stay those of the float model."""
    original, model = tiny_model(model_type, seed=3), tiny_model(model_type, seed=3)
    down_before = [t.weight().clone() for t in all_targets(model) if t.role == "down"]
    store = apply_awq(model, AWQConfig(bits=4, group_size=16, skip=[skip_role, "down"], scale_objective="linear"), SMALL)
    assert {t.role for t in all_targets(model) if t.name in store} == \
        {t.role for t in all_targets(model)} - {skip_role, "down"}
    # nothing else reads down's input, so down is untouched
    assert all(torch.equal(t.weight(), w) for t, w in
               zip([t for t in all_targets(model) if t.role == "down"], down_before))
    outs = []
    for m in (original, model):  # the skipped linear of layer 0 sees the embeddings, unchanged
        t = next(t for t in all_targets(m) if t.role == skip_role and t.layer == 0)
        h = t.module.register_forward_hook(lambda mod, a, out: outs.append(out))
        logits(m, SMALL)
        h.remove()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    # and the skipped linear's columns were scaled (it shared the norm with quantized linears)
    t0 = next(t for t in all_targets(original) if t.role == skip_role)
    t1 = next(t for t in all_targets(model) if t.role == skip_role)
    assert not torch.allclose(t0.weight(), t1.weight())


@pytest.mark.parametrize("bad", [dict(n_grid=0), dict(batch_size=0), dict(bits=9), dict(group_size=0),
                                 dict(n_grid=2.5), dict(gradient_rows=0), dict(gradient_rows=True),
                                 dict(scale_objective="block"), dict(scale_objective="Loss"),
                                 dict(scale_objective="layer")])
def test_awq_refuses_bad_configs(bad):
    with pytest.raises(SlmkitError):
        apply_awq(tiny_model("llama"), AWQConfig(**bad), SMALL)


def test_awq_needs_calibration():
    with pytest.raises(SlmkitError, match="calibration"):
        apply_awq(tiny_model("llama"), AWQConfig(), None)
