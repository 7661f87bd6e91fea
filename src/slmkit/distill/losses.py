"""Distillation divergences between a student's and a teacher's next-token distributions (pure
tensor math; the objectives in `objectives.py` wire them to models).

All take logits [..., vocab] (any float dtype; computed in float32), a temperature T (both
distributions are softened by it and the result is scaled by T^2, as Hinton et al., so gradient
sizes do not depend on T) and an optional boolean mask [...] of positions to average over.

  forward KL   KL(p_t || p_s)   mean-seeking: the student covers all of the teacher's mass
  reverse KL   KL(p_s || p_t)   mode-seeking (MiniLLM)
  JSD(beta)    beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s;
               symmetric at beta = 0.5 and bounded by log 2 (GKD's generalised JSD)
  skew KL(a)   KL(p_t || a p_t + (1 - a) p_s) (DistiLLM): forward KL that stays finite where the
               student puts ~0 mass
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _log_probs(logits: "torch.Tensor", temperature: float) -> "torch.Tensor":
    import torch.nn.functional as F

    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _mean(per_position: "torch.Tensor", mask: "torch.Tensor | None") -> "torch.Tensor":
    if mask is None:
        return per_position.mean()
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def _kl(log_p: "torch.Tensor", log_q: "torch.Tensor") -> "torch.Tensor":
    """KL(p || q) per position from log-probabilities [..., vocab] -> [...]."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def forward_kl(student, teacher, temperature: float = 1.0, mask=None):
    s, t = _log_probs(student, temperature), _log_probs(teacher, temperature)
    return _mean(_kl(t, s), mask) * temperature ** 2


def reverse_kl(student, teacher, temperature: float = 1.0, mask=None):
    s, t = _log_probs(student, temperature), _log_probs(teacher, temperature)
    return _mean(_kl(s, t), mask) * temperature ** 2


def _mixture(log_a, log_b, weight_a: float):
    """log(w a + (1 - w) b), stable."""
    import torch

    if weight_a <= 0:
        return log_b
    if weight_a >= 1:
        return log_a
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log(1 - weight_a))


def jsd(student, teacher, temperature: float = 1.0, mask=None, beta: float = 0.5):
    if not 0 < beta < 1:
        raise ValueError(f"JSD beta must be in (0, 1), not {beta}")
    s, t = _log_probs(student, temperature), _log_probs(teacher, temperature)
    m = _mixture(t, s, beta)
    per = beta * _kl(t, m) + (1 - beta) * _kl(s, m)
    return _mean(per, mask) * temperature ** 2


def skew_kl(student, teacher, temperature: float = 1.0, mask=None, alpha: float = 0.1):
    if not 0 <= alpha < 1:
        raise ValueError(f"skew KL alpha must be in [0, 1), not {alpha}")
    s, t = _log_probs(student, temperature), _log_probs(teacher, temperature)
    return _mean(_kl(t, _mixture(t, s, alpha)), mask) * temperature ** 2


DIVERGENCES = {"fkl": forward_kl, "rkl": reverse_kl, "jsd": jsd, "skl": skew_kl}


def hidden_loss(student: "torch.Tensor", teacher: "torch.Tensor", kind: str = "mse", mask=None):
    """Distance between hidden states [..., d] (already projected to the same width)."""
    import torch.nn.functional as F

    s, t = student.float(), teacher.float()
    if kind == "mse":
        per = (s - t).pow(2).mean(-1)
    elif kind == "cosine":
        per = 1 - F.cosine_similarity(s, t, dim=-1)
    else:
        raise ValueError(f"hidden-state loss must be 'mse' or 'cosine', not {kind!r}")
    return _mean(per, mask)
