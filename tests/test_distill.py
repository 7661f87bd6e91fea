"""Distillation divergences against direct references, and the white-box objective on tiny models."""

import math

import pytest
import torch

from slmkit.distill import Distill, DistillConfig, default_layer_map
from slmkit.distill.losses import DIVERGENCES, forward_kl, hidden_loss, jsd, reverse_kl, skew_kl
from slmkit.errors import SlmkitError
from slmkit.models.tiny import tiny_model, tiny_tokenizer
from slmkit.train import Batches, TrainConfig, train

GEN = torch.Generator().manual_seed(0)


def logits(*shape, scale=3.0):
    return torch.randn(*shape, generator=GEN) * scale


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_of_identical_distributions_is_zero(name):
    x = logits(2, 5, 50)
    assert DIVERGENCES[name](x, x.clone()).abs() < 1e-6
    assert DIVERGENCES[name](x, logits(2, 5, 50)) > 1e-3


def test_forward_and_reverse_kl_match_torch():
    s, t = logits(4, 7, 30), logits(4, 7, 30)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    ref_f = torch.nn.functional.kl_div(ls, lt, log_target=True, reduction="none").sum(-1).mean()
    ref_r = torch.nn.functional.kl_div(lt, ls, log_target=True, reduction="none").sum(-1).mean()
    assert torch.allclose(forward_kl(s, t), ref_f, atol=1e-6)
    assert torch.allclose(reverse_kl(s, t), ref_r, atol=1e-6)
    # temperature softens both and scales by T^2
    ls2, lt2 = (s / 2).log_softmax(-1), (t / 2).log_softmax(-1)
    ref2 = 4 * torch.nn.functional.kl_div(ls2, lt2, log_target=True, reduction="none").sum(-1).mean()
    assert torch.allclose(forward_kl(s, t, temperature=2.0), ref2, atol=1e-5)


def test_jsd_is_symmetric_and_bounded_by_log2():
    s, t = logits(3, 40, scale=1.0), logits(3, 40, scale=1.0)
    assert torch.allclose(jsd(s, t), jsd(t, s), atol=1e-6)
    far_s = torch.full((1, 4), -1e4)
    far_s[0, 0] = 1e4
    far_t = torch.full((1, 4), -1e4)
    far_t[0, 1] = 1e4                      # disjoint supports: the bound is reached
    assert jsd(far_s, far_t) <= math.log(2) + 1e-6
    assert jsd(far_s, far_t) > math.log(2) - 1e-3
    assert torch.isfinite(skew_kl(far_s, far_t))   # forward KL would be ~infinite here
    assert skew_kl(s, t, alpha=0.0) == pytest.approx(float(forward_kl(s, t)), rel=1e-5)


def test_mask_averages_only_the_chosen_positions():
    s, t = logits(2, 6, 20), logits(2, 6, 20)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 2] = True
    assert torch.allclose(forward_kl(s, t, mask=mask), forward_kl(s[1, 2], t[1, 2]), atol=1e-6)
    a, b = logits(3, 8), logits(3, 8)
    assert hidden_loss(a, a, "cosine").abs() < 1e-6 and hidden_loss(a, b, "mse") > 0
    with pytest.raises(ValueError):
        hidden_loss(a, b, "l3")


def test_gradients_reach_only_the_student():
    teacher, student = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    objective = Distill(teacher, DistillConfig(loss="jsd", ce_weight=0.3))
    ids = torch.randint(3, 500, (2, 16), generator=GEN)
    loss, metrics = objective.loss(student, {"input_ids": ids, "labels": ids})
    loss.backward()
    assert set(metrics) == {"jsd", "ce"}
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_different_tokenizers_are_refused_with_a_pointer_to_black_box():
    with pytest.raises(SlmkitError, match="black-box"):
        Distill(tiny_model("llama"), student_tokenizer=tiny_tokenizer(300),
                teacher_tokenizer=tiny_tokenizer(400))


def test_bad_configs_are_refused():
    for kwargs in ({"loss": "kl2"}, {"temperature": 0}, {"ce_weight": 1.5}, {"hidden_weight": -1}):
        with pytest.raises(SlmkitError):
            DistillConfig(**kwargs)
    with pytest.raises(SlmkitError, match="out of range"):
        Distill(tiny_model("llama"), DistillConfig(hidden_weight=1.0, layer_map={0: 9}),
                tiny_model("llama"))


def test_distilling_pulls_the_student_to_the_teacher_with_a_trained_projection(tmp_path):
    teacher = tiny_model("llama", seed=1)
    student = tiny_model("llama", seed=2, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    assert default_layer_map(1, 2) == {0: 1}
    objective = Distill(teacher, DistillConfig(hidden_weight=0.5), student)
    proj0 = objective.projection.weight.detach().clone()
    ids = torch.randint(3, 500, (16, 24), generator=GEN)
    data = Batches(ids)
    kl_before = objective.loss(student, data.batch(0, 16, 0))[1]["fkl"]
    train(student, objective, data, TrainConfig(steps=25, batch_size=8, lr=3e-3), tmp_path)
    kl_after = objective.loss(student, data.batch(0, 16, 0))[1]["fkl"]
    assert kl_after < 0.7 * kl_before
    assert not torch.equal(objective.projection.weight, proj0)   # the projection trained too


def test_on_policy_batches_score_only_what_the_student_wrote():
    teacher, student = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    cfg = DistillConfig(on_policy=1.0, on_policy_prompt=5, on_policy_tokens=7)
    objective = Distill(teacher, cfg)
    ids = torch.randint(3, 500, (2, 16), generator=GEN)
    b = objective.on_policy_batch(student, {"input_ids": ids, "labels": ids})
    assert b["input_ids"].shape == (2, 12) and torch.equal(b["input_ids"][:, :5], ids[:, :5])
    assert (b["labels"][:, :5] == -100).all() and (b["labels"][:, 5:] != -100).any()
    torch.manual_seed(0)
    loss, _ = objective.loss(student, {"input_ids": ids, "labels": ids})
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in student.parameters())
    with pytest.raises(SlmkitError):
        DistillConfig(on_policy=2.0)
