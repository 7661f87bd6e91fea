"""The chunked head + cross-entropy equals the plain logits path: loss and every gradient."""

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.models import ARCHS
from slmkit.models.tiny import tiny_model
from slmkit.train import IGNORE, CausalLM, shifted_ce
from slmkit.train.fused_ce import head_of, linear_cross_entropy, shift_labels


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_linear_cross_entropy_matches_the_plain_loss_and_gradients(bias, rows):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(12, 50, bias=bias)
    hidden = torch.randn(23, 12, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (23,), generator=g)
    labels[[0, 7, 8]] = IGNORE
    ref = torch.nn.functional.cross_entropy(head(hidden), labels, ignore_index=IGNORE)
    ref.backward()
    want = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
    hidden.grad = None
    head.zero_grad()
    mine = linear_cross_entropy(hidden, head, labels, rows=rows)
    (mine * 3).backward()   # the incoming gradient is applied
    got = [hidden.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    assert torch.allclose(mine, ref, atol=1e-6)
    for a, b in zip(got, want):
        assert torch.allclose(a, 3 * b, atol=1e-6)


def test_all_ignored_rows_give_zero_loss_and_gradient():
    head = torch.nn.Linear(4, 9)
    hidden = torch.randn(6, 4, requires_grad=True)
    loss = linear_cross_entropy(hidden, head, torch.full((6,), IGNORE), rows=2)
    loss.backward()
    assert loss.item() == 0 and hidden.grad.abs().max() == 0


def test_shifted_labels_score_the_same_positions_as_shifted_logits():
    logits = torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, 3] = IGNORE
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                              ignore_index=IGNORE)
    assert torch.allclose(shifted_ce(logits, labels), plain, atol=1e-6)
    assert shift_labels(labels)[:, -1].eq(IGNORE).all()


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_causal_lm_fused_equals_plain_on_every_architecture(model_type):
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, :5] = IGNORE
    batch = {"input_ids": ids, "labels": labels}
    results = {}
    for fused in (False, True):
        model = tiny_model(model_type, seed=3)
        model.train()
        torch.manual_seed(0)   # the same dropout masks, where a config has dropout
        objective = CausalLM(fused=fused)
        loss, _ = objective.loss(model, batch)
        loss.backward()
        results[fused] = (loss.detach(), _grads(model), objective)
    assert head_of(tiny_model(model_type)) is not None      # every tiny architecture qualifies
    assert results[True][2]._checked and all(results[True][2]._checked.values())
    assert torch.allclose(results[True][0], results[False][0], atol=1e-5)
    plain, fused = results[False][1], results[True][1]
    assert plain.keys() == fused.keys()
    for name in plain:
        assert torch.allclose(fused[name], plain[name], atol=1e-5, rtol=1e-4), name


def test_models_that_change_logits_after_the_head_take_the_plain_path():
    model = tiny_model("llama")
    model.config.final_logit_softcapping = 30.0
    assert head_of(model) is None
    assert head_of(torch.nn.Sequential(tiny_model("llama"))) is None   # a wrapper (DDP-like)


def test_fused_loss_under_bf16_autocast_is_close_to_the_plain_one():
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "labels": ids}
    out = {}
    for fused in (False, True):
        model = tiny_model("qwen2", seed=5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = CausalLM(fused=fused).loss(model, batch)
        loss.backward()
        out[fused] = (loss.detach(), model.lm_head.weight.grad.clone())
    assert torch.allclose(out[True][0], out[False][0], rtol=2e-2)
    cos = torch.nn.functional.cosine_similarity(out[True][1].flatten(), out[False][1].flatten(), dim=0)
    assert cos > 0.99


def _dense_soft_target(labels, soft_ids, soft_probs, w, vocab):
    """The mixed target distribution [n, vocab] written out densely (the reference)."""
    target = torch.zeros(labels.shape[0], vocab)
    for i, label in enumerate(labels.clamp(min=0).tolist()):
        mass = soft_probs[i].sum()
        a = w if mass > 0 else 0.0
        target[i, label] += 1 - a
        if mass > 0:
            target[i].index_add_(0, soft_ids[i], a * soft_probs[i] / mass)
    return target


@pytest.mark.parametrize("rows", [1, 4, 64])
def test_soft_targets_match_a_dense_mixed_target_loss_and_gradients(rows):
    """With soft targets (a teacher's top-k, some rows without any), the fused loss and gradients
    are the cross-entropy against (1 - w) onehot + w renormalised top-k, written densely."""
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(12, 50, bias=True)
    hidden = torch.randn(19, 12, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (19,), generator=g)
    labels[[2, 11]] = IGNORE
    soft_ids = torch.stack([torch.randperm(50, generator=g)[:5] for _ in range(19)])
    soft_ids[3, 0] = labels[3]                           # the label among the teacher's top-k
    soft_probs = torch.rand(19, 5, generator=g) * 0.15   # top-k mass below 1: renormalised
    soft_probs[[0, 6, 7]] = 0                            # positions without soft targets
    target = _dense_soft_target(labels, soft_ids, soft_probs, 0.7, 50)
    keep = labels != IGNORE
    ref = (-(target * torch.log_softmax(head(hidden), -1)).sum(-1) * keep).sum() / keep.sum()
    ref.backward()
    want = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = None
    head.zero_grad()
    mine = linear_cross_entropy(hidden, head, labels, rows=rows, soft=(soft_ids, soft_probs), soft_weight=0.7)
    (mine * 2).backward()
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip([hidden.grad, head.weight.grad, head.bias.grad], want):
        torch.testing.assert_close(a, 2 * b, atol=1e-5, rtol=1e-5)
    with pytest.raises(SlmkitError, match="outside the model's 50-token head"):
        linear_cross_entropy(hidden, head, labels, soft=(soft_ids + 50, soft_probs), soft_weight=0.7)
    # soft_weight 0, or no soft targets, is plain cross-entropy
    plain = linear_cross_entropy(hidden, head, labels, rows=rows)
    assert torch.equal(linear_cross_entropy(hidden, head, labels, rows=rows, soft=(soft_ids, soft_probs)), plain)
    assert not torch.allclose(mine, plain)


@pytest.mark.parametrize("fused", [True, False])
def test_causal_lm_with_soft_targets_fused_and_plain_agree(fused):
    """CausalLM(soft_weight) scores a batch's soft targets the same way on both paths (the plain
    one by `shifted_soft_ce`), and differs from plain CE only where they exist."""
    model = tiny_model("llama", seed=0)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 200, (2, 10), generator=g)
    soft_ids = torch.randint(0, 200, (2, 10, 4), generator=g)
    soft_probs = torch.rand(2, 10, 4, generator=g) * 0.2
    batch = {"input_ids": ids, "labels": ids.clone(), "soft_ids": soft_ids, "soft_probs": soft_probs}
    dense = torch.stack([_dense_soft_target(ids[b, 1:], soft_ids[b, :-1], soft_probs[b, :-1], 0.5,
                                            model.config.vocab_size) for b in range(2)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
    want = -(dense * logp).sum(-1).mean()
    loss, _ = CausalLM(fused=fused, soft_weight=0.5).loss(model, batch)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    no_soft = {**batch, "soft_probs": torch.zeros_like(soft_probs)}
    torch.testing.assert_close(CausalLM(fused=fused, soft_weight=0.5).loss(model, no_soft)[0],
                               CausalLM(fused=fused).loss(model, batch)[0], atol=1e-5, rtol=1e-5)
