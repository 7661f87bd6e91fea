"""Exact scale folding (compress/smooth.py) on every architecture, and AWQ: math and models."""

import pytest
import torch
from smooth_models import CALIB, logits, n_layers, with_outliers

from slmkit.compress.api import apply_rtn
from slmkit.compress.calibrate import sequential
from slmkit.compress.quantize.awq import (
    SITES,
    AWQConfig,
    GatedErrors,
    apply_awq,
    awq_scales,
    clip_weight,
    fake_quantize,
    floored,
    guard_clip_by_layer,
    guard_gated_clip,
    output_mse,
    search_clip,
    search_scale,
    search_scale_layer,
    weight_mean,
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
from slmkit.compress.targets import all_targets, layer_targets
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
def test_fake_quantize_equals_rtn_on_the_clipped_weight(group_size, symmetric):
    w = torch.randn(12, 96, generator=gen(1))
    n_groups = -(-96 // (group_size or 96))
    for shrink in (None, 0.5 + 0.5 * torch.rand(12, n_groups, generator=gen(2))):
        clipped = clip_weight(w, shrink, group_size)
        expected = rtn(clipped, 4, group_size, symmetric).dequantize()
        torch.testing.assert_close(fake_quantize(w, 4, group_size, symmetric, shrink), expected)
        if shrink is not None:  # every value inside its shrunk range, extremes reached
            assert (clipped.abs() <= w.abs() + 1e-7).all() and not torch.equal(clipped, w)


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


def test_search_scale_weighs_each_output_rows_error():
    """With row_weights every candidate's error is the weighted mean of its rows' output errors,
    and weight on a single row makes the search pick that row's best scale."""
    x, w = outlier_inputs(), torch.randn(48, 96, generator=gen(3))
    gram, weights = x.T @ x / len(x), torch.rand(48, generator=gen(4))
    _, _, errors = search_scale(x.abs().mean(0), gram, w, 4, 32, False, n_grid=10, row_weights=weights)
    for i, (r, s) in enumerate((i / 10, awq_scales(x.abs().mean(0), i / 10)) for i in range(10)):
        rows = ((x @ (fake_quantize(w * s, 4, 32, False) / s).T - x @ w.T) ** 2).mean(0)
        assert errors[i] == pytest.approx((rows * weights).mean().item(), rel=1e-4)
    per_row = []
    for row in (0, 7):
        one = torch.zeros(48)
        one[row] = 1.0
        _, ratio, errs = search_scale(x.abs().mean(0), gram, w, 4, 32, False, n_grid=10, row_weights=one)
        assert errs[round(ratio * 10)] == min(errs)
        per_row.append(ratio)
    _, uniform, _ = search_scale(x.abs().mean(0), gram, w, 4, 32, False, n_grid=10)
    assert len({*per_row, uniform}) > 1  # different weights, different choices


def test_weight_mean_normalises_by_each_groups_max():
    w = torch.tensor([[1.0, -2.0, 4.0, 0.0], [3.0, 0.0, -1.0, -1.0]])
    # groups of 2: row 0 -> [0.5, 1 | 1, 0], row 1 -> [1, 0 | 1, 1]; mean over rows
    torch.testing.assert_close(weight_mean(w, 2), torch.tensor([0.75, 0.5, 1.0, 0.5]), rtol=1e-5, atol=1e-5)


def test_duo_scaling_adds_candidates_and_never_does_worse():
    x, w = outlier_inputs(seed=2), torch.randn(48, 96, generator=gen(6))
    w[:, [5, 11]] *= 8  # weight outliers, which the weight-aware candidates can see
    gram = x.T @ x / len(x)
    _, _, plain = search_scale(x.abs().mean(0), gram, w, 4, 32, False, n_grid=10)
    s, ratio, errors = search_scale(x.abs().mean(0), gram, w, 4, 32, False, n_grid=10, duo_scaling=True)
    assert len(errors) == 20 and errors[:10] == pytest.approx(plain, rel=1e-6)
    assert errors[10:] != pytest.approx(plain, rel=1e-3)  # the duo candidates are different scales
    err = (x @ (fake_quantize(w * s, 4, 32, False) / s - w).T).pow(2).mean().item()
    assert err == pytest.approx(min(errors), rel=1e-4) and min(errors) <= min(plain)


def test_search_clip_lowers_each_groups_output_error():
    x, w = outlier_inputs(seed=1), torch.randn(40, 96, generator=gen(4))
    w[:, 7] *= 6  # a weight outlier: clipping it helps the rest of its group
    shrink = search_clip(w, x.T @ x / len(x), 3, 32, False, n_grid=20, max_shrink=0.5)
    assert shrink.shape == (40, 3) and shrink.min() >= 0.55 - 1e-6 and shrink.max() <= 1
    assert (shrink < 1).any()

    def group_err(wq):
        xg, d = x.reshape(-1, 3, 32), (wq - w).reshape(40, 3, 32)
        return torch.einsum("ngk,ogk->ogn", xg, d).pow(2).mean(-1)   # [out, groups]
    clipped = group_err(fake_quantize(w, 3, 32, False, shrink))
    plain = group_err(fake_quantize(w, 3, 32, False))
    assert (clipped <= plain + 1e-6).all() and clipped.sum() < plain.sum()


def test_clip_floor_keeps_a_quiet_inputs_outlier_weights_unclipped():
    """Channel 7 holds each row's largest weight but is nearly silent in calibration: on the bare
    Gram the search clips it for free; on the floored Gram it keeps more of the range, and where
    channel 7 fires as hard as the salient channels, the floored clip has the lower output error."""
    x, w = outlier_inputs(seed=1), torch.randn(40, 96, generator=gen(4))
    x[:, 7] *= 1e-3
    w[:, 7] = 6 * w.abs().amax(1)
    bare, floored = (search_clip(w, x.T @ x / len(x), 3, 32, False, floor=f) for f in (0.0, 1.0))
    assert bare[:, 0].mean() < floored[:, 0].mean()              # group 0 holds channel 7
    awake = outlier_inputs(seed=2)
    awake[:, 7] *= 25
    errs = [(awake @ (fake_quantize(w, 3, 32, False, s) - w).T).pow(2).mean() for s in (bare, floored)]
    assert errs[1] < errs[0]


def test_scale_floor_spares_inputs_the_calibration_leaves_quiet():
    """Half the channels are nearly silent in calibration: on the bare Gram the scale search
    shrinks their weights onto a coarse grid for free; on the floored Gram it scales less, and
    where those channels fire, the floored choice has the lower output error."""
    x, w = outlier_inputs(seed=3), torch.randn(48, 96, generator=gen(7))
    quiet = torch.arange(96) % 2 == 1
    x[:, quiet] *= 1e-2
    chosen = {}
    for f in (0.0, 1.0):
        gram = floored(x.T @ x / len(x), f)
        chosen[f] = search_scale(x.abs().mean(0), gram, w, 3, 32, False, n_grid=20)[:2]
    bare = x.T @ x
    assert floored(bare, 0.0) is bare
    assert chosen[1.0][1] < chosen[0.0][1]                   # a smaller exponent
    awake = outlier_inputs(seed=4)

    def err(s):
        return (awake @ (fake_quantize(w * s, 3, 32, False) / s - w).T).pow(2).mean()
    assert err(chosen[1.0][0]) < 0.9 * err(chosen[0.0][0])
    with pytest.raises(SlmkitError, match="scale_floor"):
        AWQConfig(scale_floor=-1).check()


def test_clip_guard_keeps_no_row_whose_full_output_error_the_clip_raises():
    """The per-group search ignores cross-group terms: with one signal shared by every channel
    and one-signed outliers in every group, clipping each group alone helps, but the clipped
    groups' errors add up in some rows. The guard leaves those rows unclipped."""
    g = gen(0)
    x = torch.randn(512, 1, generator=g) + 0.05 * torch.randn(512, 96, generator=g) + 1.0
    w = torch.randn(40, 96, generator=g)
    w[:, [7, 40, 75]] = 5 * w[:, 7:8].sign()
    gram = x.T @ x / len(x)

    def row_err(shrink):
        d = fake_quantize(w, 3, 32, False, shrink) - w
        return (x @ d.T).pow(2).mean(0)                          # [out], directly from the tokens
    plain = row_err(None)
    unguarded = search_clip(w, gram, 3, 32, False, guard=False)
    assert (row_err(unguarded) > plain * (1 + 1e-4)).any()       # the failure the guard exists for
    guarded = search_clip(w, gram, 3, 32, False)
    assert (row_err(guarded) <= plain * (1 + 1e-4)).all()
    assert (guarded < 1).any()                                   # the clip survives where it helps
    kept = (guarded < 1).any(1)
    assert torch.equal(guarded[kept], unguarded[kept]) and (guarded[~kept] == 1).all()


def test_gated_guard_keeps_each_channels_better_clip():
    """Per intermediate channel of act(gate(x)) * up(x): after the guard, the channel's error is
    the smaller of the clipped and the unclipped one, measured on the calibration tokens."""
    model = with_outliers(tiny_model("llama", seed=0))
    layer = get_arch(model).decoder_layers(model)[0]
    roles = {t.role: t for t in layer_targets(model, 0)}
    gate, up = roles["gate"], roles["up"]
    x = []
    hook = gate.module.register_forward_pre_hook(lambda m, a: x.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(CALIB)
    hook.remove()
    x = torch.cat(x).float()
    gram = x.T @ x / len(x)
    cfg = AWQConfig(bits=3, group_size=16)
    shrinks = {t.name: search_clip(t.weight().float(), gram, 3, 16, False) for t in (gate, up)}
    before = {k: v.clone() for k, v in shrinks.items()}
    ref = (gate.weight().float(), up.weight().float())
    act = get_arch(model).gated_mlp_act(layer)
    assert act is layer.mlp.act_fn

    def channel_err(shrink_g, shrink_u):
        h = act(x @ fake_quantize(ref[0], 3, 16, False, shrink_g).T) * (x @ fake_quantize(ref[1], 3, 16, False, shrink_u).T)
        return (h - act(x @ ref[0].T) * (x @ ref[1].T)).pow(2).sum(0)
    plain, clipped = channel_err(None, None), channel_err(before[gate.name], before[up.name])
    assert (clipped > plain * (1 + 1e-4)).any() and (clipped < plain).any()   # both cases occur
    reset = guard_gated_clip(act, gate, up, shrinks, cfg, lambda: model(CALIB))
    worse = clipped >= plain
    assert reset == int(worse.sum()) > 0
    for t in (gate, up):
        assert (shrinks[t.name][worse] == 1).all()
        assert torch.equal(shrinks[t.name][~worse], before[t.name][~worse])
    after = channel_err(shrinks[gate.name], shrinks[up.name])
    torch.testing.assert_close(after, torch.minimum(plain, clipped), rtol=1e-4, atol=1e-6)
    with GatedErrors(gate.module, act, ref, [(ref[0], ref[1])]) as ge:       # exact weights: no error
        with torch.no_grad():
            model(CALIB)
    assert ge.sq[0].abs().max() < 1e-8 and not gate.module._forward_pre_hooks


def test_layer_objective_search_scores_candidates_in_place_and_restores_the_weights():
    """On a real layer: the r = 0 candidate's error is the layer's output error with RTN weights in
    place, the chosen scale is never worse than it on the probe, and the float weights come back."""
    model = with_outliers(tiny_model("llama", seed=4))
    seen = {}

    def on_layer(i, layer, run):
        if i != 0:
            return
        g = next(g for g in scale_groups(model, 0) if g.site == "mlp_in")
        with ActivationStats({"x": g.linears[0].module}) as st:
            run()
        score = run.probe(2)
        before = [t.weight().clone() for t in g.linears]
        s, ratio, errors = search_scale_layer(g.linears, st.stats["x"].mean_abs, score, 4, 16, False, n_grid=6)
        seen["restored"] = all(torch.equal(t.weight(), w) for t, w in zip(g.linears, before))
        for t in g.linears:
            t.set_weight(rtn(t.weight().float(), 4, 16, False).dequantize())
        seen["rtn"], seen["errors"], seen["ratio"] = score(), errors, ratio
        for t, w in zip(g.linears, before):
            t.set_weight(w)

    sequential(model, CALIB[:4, :32], on_layer, batch_size=2)
    assert seen["restored"] and len(seen["errors"]) == 6
    assert seen["errors"][0] == pytest.approx(seen["rtn"], rel=1e-5) and seen["rtn"] > 0
    assert min(seen["errors"]) == seen["errors"][round(seen["ratio"] * 6)] <= seen["errors"][0]


def test_layer_guard_drops_clips_that_raise_the_layers_error():
    """On a real layer: a clip cutting half of every group's range (far too much) is dropped, the
    kept clips give a layer error no higher than plain grids, and the float weights come back."""
    model = with_outliers(tiny_model("llama", seed=5))
    cfg = AWQConfig(bits=4, group_size=16)
    seen = {}

    def on_layer(i, layer, run):
        if i != 0:
            return
        targets = layer_targets(model, 0, ())
        by_role = {t.role: t for t in targets}
        before = {t.name: t.weight().clone() for t in targets}
        shrinks = {}
        for role in ("v", "gate", "up", "down"):
            w = by_role[role].weight().float()
            shrinks[by_role[role].name] = search_clip(w, torch.eye(w.shape[1]), 4, 16, False)
        shrinks[by_role["o"].name] = torch.full((by_role["o"].weight().shape[0], 4), 0.5)
        score = run.probe(2)
        kept = dict(shrinks)
        seen["dropped"] = guard_clip_by_layer(targets, shrinks, cfg, score)
        seen["restored"] = all(torch.equal(t.weight(), before[t.name]) for t in targets)

        def layer_error(clips):
            for t in targets:
                t.set_weight(fake_quantize(before[t.name].float(), 4, 16, False, clips.get(t.name)))
            err = score()
            for t in targets:
                t.set_weight(before[t.name])
            return err
        seen["plain"], seen["guarded"], seen["all"] = layer_error({}), layer_error(shrinks), layer_error(kept)
        seen["names"] = {r: by_role[r].name for r in by_role}
        seen["left"] = set(shrinks)

    sequential(model, CALIB[:4, :32], on_layer, batch_size=2)
    names = seen["names"]
    assert seen["restored"] and names["o"] in seen["dropped"] and names["o"] not in seen["left"]
    assert seen["left"] | set(seen["dropped"]) == {names[r] for r in ("v", "o", "gate", "up", "down")}
    assert (names["gate"] in seen["left"]) == (names["up"] in seen["left"])  # one unit
    assert seen["guarded"] <= seen["plain"] and seen["guarded"] < seen["all"]


# ---- AWQ on models ---------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["linear", "layer", "layer_all"])
@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_awq_beats_rtn_with_activation_outliers(model_type, objective):
    """W4 g32, same grid: logits MSE vs the float model (held-out ids) lower with AWQ, with either
    scale objective."""
    rtn_err, awq_err = rtn_and_awq_errors(lambda: with_outliers(tiny_model(model_type, seed=0)),
                                          AWQConfig(bits=4, group_size=32, scale_objective=objective, clip=True))
    print(f"{model_type} ({objective}): logits MSE rtn {rtn_err:.3g} awq {awq_err:.3g} ratio {awq_err / rtn_err:.2f}")
    assert awq_err < 0.8 * rtn_err


def rtn_and_awq_errors(make_model, awq_cfg: AWQConfig) -> tuple[float, float]:
    """Logits MSE against the float model made by `make_model`, for RTN W4 g32 and for `awq_cfg`."""
    ref = logits(make_model())

    def error(apply):
        model = make_model()
        apply(model)
        return (logits(model) - ref).pow(2).mean().item()

    return (error(lambda m: apply_rtn(m, RTNConfig(bits=4, group_size=32))),
            error(lambda m: apply_awq(m, awq_cfg, CALIB)))


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_awq_with_fisher_weights_beats_rtn_and_changes_the_search(model_type):
    """output_weights="fisher": the scale search weighs output rows by their Fisher weights, so its
    recorded errors differ from the plain objective's, and it still beats RTN on the logits."""
    from slmkit.compress import quantize

    cfg = AWQConfig(bits=4, group_size=32, clip=True, scale_objective="linear", output_weights="fisher",
                    fisher_rows=2)
    rtn_err, awq_err = rtn_and_awq_errors(lambda: with_outliers(tiny_model(model_type, seed=0)), cfg)
    assert awq_err < 0.8 * rtn_err

    def record(output_weights):
        model = with_outliers(tiny_model(model_type, seed=0))
        quantize(model, AWQConfig(bits=4, group_size=32, n_grid=5, clip=False, scale_objective="linear",
                                  output_weights=output_weights,
                                  fisher_rows=2), CALIB, pack_weights=False)
        return [round(r["error_vs_rtn"], 6) for r in model._slmkit_steps[-1]["sites"]]
    fisher, uniform = record("fisher"), record("uniform")
    assert len(fisher) == len(uniform) and fisher != uniform
    assert max(fisher) <= 1.0


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
                                          AWQConfig(bits=4, group_size=32, scale_objective="linear", clip=True))
    print(f"{model_type}: logits MSE rtn {rtn_err:.3g} awq {awq_err:.3g} ratio {awq_err / rtn_err:.2f}")
    assert awq_err < 0.5 * rtn_err


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_awq_quantizes_every_target_onto_its_grid(model_type):
    model = tiny_model(model_type, seed=2)
    ref = logits(model)
    store = apply_awq(model, AWQConfig(bits=3, group_size=16, n_grid=8, clip_grid=8), SMALL)
    targets = all_targets(model)
    assert set(store) == {t.name for t in targets}
    for t in targets:
        qw = store[t.name]
        assert qw.bits == 3 and qw.group_size == 16 and int(qw.q.max()) <= 7
        assert torch.equal(t.weight(), qw.dequantize())
    # still the same model (a folding mistake gives errors of the order of the logits themselves)
    assert (logits(model) - ref).pow(2).mean() < 0.3 * ref.pow(2).mean()


@pytest.mark.parametrize("objective", ["linear", "layer", "layer_all"])
def test_awq_records_what_its_scale_search_chose_at_every_site(objective):
    """quantize() keeps AWQ's per-site choices in the step record (saved into slmkit.json): every
    absorbable site of every layer, an exponent on the grid, and an error at most plain RTN's (r = 0
    is a candidate); with outlier channels the scale helps somewhere."""
    from slmkit.compress import quantize

    model = with_outliers(tiny_model("llama", seed=0))
    quantize(model, AWQConfig(bits=4, group_size=32, n_grid=5, duo_scaling=True, clip=False,
                              scale_objective=objective), CALIB, pack_weights=False)
    step = model._slmkit_steps[-1]
    absorbable = [(i, g.site) for i in range(n_layers(model)) for g in scale_groups(model, i) if g.prev]
    assert [(r["layer"], r["site"]) for r in step["sites"]] == absorbable
    for r in step["sites"]:
        assert r["ratio"] in [i / 5 for i in range(5)] and isinstance(r["duo"], bool)
        assert r["error_vs_rtn"] <= 1.0
    assert min(r["error_vs_rtn"] for r in step["sites"]) < 0.9
    layer_sites = {r["site"] for r in step["sites"] if r["objective"] == "layer"}
    assert layer_sites == {"linear": set(), "layer": {"attn_in", "mlp_in"}, "layer_all": set(SITES)}[objective]
    assert not hasattr(model, "_slmkit_quantize_report")


def test_awq_scales_only_the_sites_asked_for():
    """sites=[] without clip is plain RTN (same weights); sites=["attn_out"] searches o's input only."""
    from slmkit.compress import quantize

    def run(sites):
        model = with_outliers(tiny_model("qwen2", seed=0))
        quantize(model, AWQConfig(bits=4, group_size=32, n_grid=5, clip=False, sites=sites), CALIB,
                 pack_weights=False)
        return model
    plain = with_outliers(tiny_model("qwen2", seed=0))
    apply_rtn(plain, RTNConfig(bits=4, group_size=32))
    none = run([])
    for a, b in zip(all_targets(none), all_targets(plain)):
        torch.testing.assert_close(a.weight(), b.weight(), rtol=1e-5, atol=1e-6)
    assert none._slmkit_steps[-1]["sites"] == []
    only_o = run(["attn_out"])
    assert {r["site"] for r in only_o._slmkit_steps[-1]["sites"]} == {"attn_out"}
    with pytest.raises(SlmkitError, match="sites"):
        AWQConfig(sites=["attn", "mlp_in"]).check()
    with pytest.raises(SlmkitError, match="sites"):
        AWQConfig(sites="attn_out").check()


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


@pytest.mark.parametrize("bad", [dict(n_grid=0), dict(clip_grid=0), dict(max_shrink=1.0),
                                 dict(max_shrink=-0.1), dict(batch_size=0),
                                 dict(bits=9), dict(group_size=0), dict(n_grid=2.5),
                                 dict(duo_scaling="yes"), dict(scale_objective="block"),
                                 dict(probe_rows=0), dict(clip_floor=-1.0),
                                 dict(output_weights="hessian"), dict(fisher_rows=0),
                                 dict(gradient_rows=0), dict(scale_objective="Loss"),
                                 dict(output_weights="fisher")])
def test_awq_refuses_bad_configs(bad):
    with pytest.raises(SlmkitError):
        apply_awq(tiny_model("llama"), AWQConfig(**bad), SMALL)


def test_awq_needs_calibration():
    with pytest.raises(SlmkitError, match="calibration"):
        apply_awq(tiny_model("llama"), AWQConfig(), None)
