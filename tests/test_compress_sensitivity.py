"""Fisher weights of linear outputs (compress/sensitivity.py), checked against plain autograd."""

import pytest
import torch
import torch.nn.functional as F

from slmkit.compress.sensitivity import loss_sensitivity
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.models.tiny import tiny_model

IDS = torch.randint(3, 500, (3, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_fisher_is_the_mean_squared_output_gradient(model_type):
    """Per target, E[(dL/dy)^2] over tokens, L each row's summed next-token cross-entropy: the
    same as retaining every output's gradient by hand, row by row (gpt2: Conv1D linears)."""
    model = tiny_model(model_type, seed=2)
    targets = all_targets(model)
    got = loss_sensitivity(model, IDS, targets).fisher
    want = {t.name: torch.zeros(t.weight().shape[0]) for t in targets}
    for row in IDS.split(1):
        outs = {}
        hooks = [t.module.register_forward_hook(lambda m, a, out, n=t.name: outs.__setitem__(n, out))
                 for t in targets]
        logits = model(row).logits[0, :-1]
        for h in hooks:
            h.remove()
        grads = torch.autograd.grad(F.cross_entropy(logits, row[0, 1:], reduction="sum"),
                                    [outs[t.name] for t in targets])
        for t, g in zip(targets, grads):
            want[t.name] += g.reshape(-1, g.shape[-1]).pow(2).sum(0)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name] / IDS.numel(), rtol=1e-4, atol=1e-12)
    assert min(v.sum() for v in got.values()) > 0


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_loss_sensitivity_weight_grads_are_the_mean_token_loss_gradient(model_type):
    """weight_grads: d(mean next-token loss over every row)/dW as [out, in], the same as autograd on
    the model's own loss over the whole batch (gpt2: Conv1D stores [in, out]); Fisher unchanged."""
    model = tiny_model(model_type, seed=1)
    targets = all_targets(model)
    got = loss_sensitivity(model, IDS, targets, weight_grads=True)
    want = torch.autograd.grad(model(IDS, labels=IDS).loss, [t.module.weight for t in targets])
    assert got.grads.keys() == {t.name for t in targets}
    for t, g in zip(targets, want):
        torch.testing.assert_close(got.grads[t.name], g.T if t.conv1d else g, rtol=1e-4, atol=1e-8)
        assert got.grads[t.name].shape == t.weight().shape
    fisher = loss_sensitivity(model, IDS, targets).fisher
    for name in fisher:
        torch.testing.assert_close(got.fisher[name], fisher[name])
    assert loss_sensitivity(model, IDS, targets).grads == {}


@pytest.mark.parametrize("weight_grads", [False, True])
def test_loss_sensitivity_leaves_the_model_as_it_was(weight_grads):
    """No parameter gradients left (an existing .grad is kept as it was), requires_grad flags and
    train/eval mode restored, works under no_grad."""
    model = tiny_model("llama", seed=0)
    model.train()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    kept = torch.ones_like(params[1])
    params[1].grad = kept
    flags = [p.requires_grad for p in params]
    with torch.no_grad():
        sens = loss_sensitivity(model, IDS[:1], all_targets(model), weight_grads=weight_grads)
    assert all(v.sum() > 0 for v in sens.fisher.values())
    assert len(sens.grads) == (len(all_targets(model)) if weight_grads else 0)
    assert [p.requires_grad for p in params] == flags
    assert params[1].grad is kept and all(p.grad is None for i, p in enumerate(params) if i != 1)
    assert model.training


def test_loss_sensitivity_refuses_bad_ids():
    model = tiny_model("llama", seed=0)
    with pytest.raises(SlmkitError, match="length >= 2"):
        loss_sensitivity(model, IDS[:, :1], all_targets(model))
