"""AWQ's loss objective (scale_objective="loss"): the predicted loss change, its gradients and
Fisher weights carried through folds, and the objective on tiny models."""

import pytest
import torch
from smooth_models import CALIB, with_outliers

from slmkit.compress.quantize.awq import AWQConfig, loss_change
from slmkit.compress.quantize.config import RTNConfig
from slmkit.compress.smooth import ActivationStats, fold_scales, scale_groups, tie_channels
from slmkit.compress.targets import all_targets, layer_targets
from slmkit.models.tiny import tiny_model


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_loss_change_predicts_the_loss_change_of_a_small_weight_change():
    """loss_change(w, gram, grad, fisher)(w + dw) is the model's mean-loss change when one linear
    moves by a small dw (first order dominates there: the prediction flips sign with dw), from the
    gradient and Fisher weights of `loss_sensitivity` and the linear's input Gram matrix."""
    from slmkit.compress.sensitivity import loss_sensitivity

    model = tiny_model("llama", seed=3)
    target = all_targets(model)[5]
    sens = loss_sensitivity(model, CALIB, [target], weight_grads=True)
    with ActivationStats({"x": target.module}, gram=True) as st, torch.no_grad():
        model(CALIB)
    w = target.weight().clone()
    error = loss_change(w, st.stats["x"].gram, sens.grads[target.name], sens.fisher[target.name])

    def loss():
        with torch.no_grad():
            return model(CALIB, labels=CALIB).loss.item()
    base = loss()
    dw = 0.02 * w.abs().mean() * torch.randn(w.shape, generator=gen(1))
    for sign in (1, -1):
        target.set_weight(w + sign * dw)
        actual = loss() - base
        predicted = error(w + sign * dw)
        assert abs(predicted - actual) < 0.1 * abs(actual) and abs(actual) > 1e-5
    target.set_weight(w)
    assert error(w) == 0.0


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_awq_loss_objective_lowers_the_loss_on_its_gradient_rows(model_type):
    """scale_objective="loss": every site records its predicted loss change, at most plain RTN's
    (r = 0 is a candidate); on the calibration rows the gradient came from, the quantized model's
    loss is lower than RTN's and than the linear objective's (which never sees the first-order
    term) and its choices differ; the model gets no gradients or requires_grad flags out of it."""
    from slmkit.compress import quantize

    def loss(model):
        with torch.no_grad():
            return model(CALIB, labels=CALIB).loss.item()

    def quantized(cfg, calib=CALIB):
        model = with_outliers(tiny_model(model_type, seed=0))
        flags = [p.requires_grad for p in model.parameters()]
        quantize(model, cfg, calib, pack_weights=False)
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
        return model

    common = dict(bits=4, group_size=32, n_grid=5)
    by_loss = quantized(AWQConfig(**common, scale_objective="loss", gradient_rows=8))
    by_rtn = quantized(RTNConfig(bits=4, group_size=32), None)
    by_mse = quantized(AWQConfig(**common, scale_objective="linear"))
    assert loss(by_loss) < min(loss(by_rtn), loss(by_mse)) - 1e-3
    sites = by_loss._slmkit_steps[-1]["sites"]
    assert len(sites) == len(by_mse._slmkit_steps[-1]["sites"])
    assert all(r["objective"] == "loss" and r["predicted_dl"] <= r["predicted_dl_rtn"] for r in sites)
    assert any(r["ratio"] > 0 for r in sites)
    assert [r["ratio"] for r in sites] != [r["ratio"] for r in by_mse._slmkit_steps[-1]["sites"]]


def test_rescale_sensitivity_keeps_predicted_loss_changes_after_a_fold():
    """After fold_scales, rescaled gradients and Fisher weights predict the same loss change for
    the same function change: a weight change dW of the float linears equals dW * s (columns) in
    the folded ones, and v's rows (o's absorber, tied under GQA) carry o's scale too."""
    from slmkit.compress.quantize.awq import rescale_sensitivity, row_loss_changes
    from slmkit.compress.sensitivity import loss_sensitivity

    model = tiny_model("llama", seed=0)   # grouped-query attention: o's scales are tied
    targets = layer_targets(model, 0)
    sens = loss_sensitivity(model, CALIB[:2], targets, weight_grads=True)
    grads, fisher = dict(sens.grads), dict(sens.fisher)
    group = next(g for g in scale_groups(model, 0) if g.site == "attn_out")
    v = next(t for t in targets if t.role == "v")
    o = next(t for t in targets if t.role == "o")
    gram_v, gram_o = torch.eye(v.weight().shape[1]), torch.eye(o.weight().shape[1])
    dv = 0.01 * torch.randn(v.weight().shape, generator=gen(2))
    do = 0.01 * torch.randn(o.weight().shape, generator=gen(3))
    before = (row_loss_changes(dv, gram_v, grads[v.name], fisher[v.name]).sum()
              + row_loss_changes(do, gram_o, grads[o.name], fisher[o.name]).sum())
    s = tie_channels(torch.rand(group.in_features, generator=gen(4)) + 0.5, group.prev.tie)
    per_row = torch.zeros(v.weight().shape[0]).scatter_(0, group.prev.tie, s)
    fold_scales(group, s)
    rescale_sensitivity(group, s, grads, fisher)
    # the same function change in folded units: v's rows over s, o's columns times s (o's inputs
    # are x / s: its Gram over s s^T, as apply_awq keeps it)
    after = (row_loss_changes(dv / per_row[:, None], gram_v, grads[v.name], fisher[v.name]).sum()
             + row_loss_changes(do * s[None, :], gram_o / (s[:, None] * s[None, :]), grads[o.name],
                                fisher[o.name]).sum())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-9)
    assert not torch.equal(grads[o.name], sens.grads[o.name])
