"""Chunked forward-KL distillation from hidden states equals the plain logits path."""

import pytest
import torch

from slmkit.distill import Distill, DistillConfig
from slmkit.distill.fused_kd import linear_distill
from slmkit.distill.losses import forward_kl
from slmkit.models import ARCHS
from slmkit.models.tiny import tiny_model
from slmkit.train import IGNORE


def _plain(hidden, head, t_hidden, t_head, labels, temperature, ce_weight):
    v = min(head.weight.shape[0], t_head.weight.shape[0])
    s, t = head(hidden)[:, :v], t_head(t_hidden)[:, :v].detach()
    mask = labels != IGNORE
    div = forward_kl(s, t, temperature, mask)
    ce = torch.nn.functional.cross_entropy(s.float(), labels, ignore_index=IGNORE)
    return (1 - ce_weight) * div + ce_weight * ce, div, ce


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 64])
@pytest.mark.parametrize("temperature,ce_weight,t_vocab", [(1.0, 0.0, 50), (2.0, 0.3, 50), (1.0, 0.5, 53)])
def test_linear_distill_matches_the_plain_loss_and_gradients(bias, rows, temperature, ce_weight, t_vocab):
    g = torch.Generator().manual_seed(0)
    head, t_head = torch.nn.Linear(12, 50, bias=bias), torch.nn.Linear(7, t_vocab, bias=bias)
    hidden = torch.randn(23, 12, generator=g, requires_grad=True)
    t_hidden = torch.randn(23, 7, generator=g)
    labels = torch.randint(0, 50, (23,), generator=g)
    labels[[0, 7, 8]] = IGNORE
    ref = _plain(hidden, head, t_hidden, t_head, labels, temperature, ce_weight)
    ref[0].backward()
    want = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
    hidden.grad = None
    head.zero_grad()
    mine = linear_distill(hidden, head, t_hidden, t_head, labels, temperature, ce_weight, rows=rows)
    (mine[0] * 3).backward()   # the incoming gradient is applied
    got = [hidden.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    for a, b in zip(mine, ref[:3] if ce_weight else ref[:2]):   # CE is computed when it is mixed in
        assert torch.allclose(a, b, atol=1e-6), (a, b)
    for a, b in zip(got, want):
        assert torch.allclose(a, 3 * b, atol=1e-6)
    assert t_head.weight.grad is None


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_distill_fused_equals_plain_on_every_architecture(model_type):
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, :5] = IGNORE
    cfg = DistillConfig(loss="fkl", temperature=2.0, ce_weight=0.25, hidden_weight=0.5)
    results = {}
    for fused in (False, True):
        teacher, student = tiny_model(model_type, seed=1), tiny_model(model_type, seed=3)
        student.train()
        objective = Distill(teacher, cfg, student, fused=fused)
        torch.manual_seed(0)   # the same dropout masks, where a config has dropout
        loss, metrics = objective.loss(student, {"input_ids": ids, "labels": labels})
        loss.backward()
        assert all(p.grad is None for p in teacher.parameters())
        results[fused] = (loss.detach(), metrics, _grads(student), objective)
    assert results[True][3]._checked and all(results[True][3]._checked.values())   # fused path taken
    assert not results[False][3]._checked
    assert torch.allclose(results[True][0], results[False][0], atol=1e-5)
    for key in ("fkl", "ce", "hidden"):
        assert abs(results[True][1][key] - results[False][1][key]) < 1e-5, key
    plain, fused = results[False][2], results[True][2]
    assert plain.keys() == fused.keys()
    for name in plain:
        assert torch.allclose(fused[name], plain[name], atol=1e-5, rtol=1e-4), name


def test_other_divergences_take_the_plain_path():
    teacher, student = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    objective = Distill(teacher, DistillConfig(loss="rkl"))
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    loss, metrics = objective.loss(student, {"input_ids": ids, "labels": ids})
    assert set(metrics) == {"rkl"} and torch.isfinite(loss) and not objective._checked
