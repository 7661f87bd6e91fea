"""Fisher weights of linear outputs (compress/sensitivity.py), checked against plain autograd."""

import pytest
import torch
import torch.nn.functional as F

from slmkit.compress.sensitivity import output_fisher
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.models.tiny import tiny_model

IDS = torch.randint(3, 500, (3, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_output_fisher_is_the_mean_squared_output_gradient(model_type):
    """Per target, E[(dL/dy)^2] over tokens, L each row's summed next-token cross-entropy: the
    same as retaining every output's gradient by hand, row by row (gpt2: Conv1D linears)."""
    model = tiny_model(model_type, seed=2)
    targets = all_targets(model)
    got = output_fisher(model, IDS, targets)
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


def test_output_fisher_leaves_the_model_as_it_was():
    """No parameter gradients, requires_grad flags and train/eval mode restored, works under no_grad."""
    model = tiny_model("llama", seed=0)
    model.train()
    next(model.parameters()).requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with torch.no_grad():
        fisher = output_fisher(model, IDS[:1], all_targets(model))
    assert all(v.sum() > 0 for v in fisher.values())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_output_fisher_refuses_bad_ids():
    model = tiny_model("llama", seed=0)
    with pytest.raises(SlmkitError, match="length >= 2"):
        output_fisher(model, IDS[:, :1], all_targets(model))
