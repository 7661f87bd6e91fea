"""Forward-KL distillation (optionally mixed with cross-entropy) computed from the student's and
the teacher's last hidden states, both output heads applied in row chunks, so neither model's
full [tokens, vocab] logits exist (as `slmkit.train.fused_ce` does for cross-entropy).

The plain path holds both models' float32 logits, both log-softmaxes, the teacher's
probabilities and the gradient at once: six [tokens, vocab] tensors, 6 x 403 MB for 4 x 512
tokens of SmolLM2's 49,152-token vocabulary. Here each chunk of rows gets both logits, its share
of the loss and, in the same pass, d loss / d student logits:

    T^2 KL(p_t || p_s) at temperature T:   T (softmax(s / T) - softmax(t / T))
    cross-entropy on the labels:            softmax(s) - onehot(label)

mixed (1 - ce_weight) : ce_weight and averaged over the scored positions, then turned into the
gradients of the student's hidden states, head weight and bias (`HeadGrads`). The matmuls are
the plain path's; the memory is one chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slmkit.train.fused_ce import CHUNK_BYTES, ChunkedHeadLoss, HeadGrads, ce_rows_, scored_chunks


class _LinearDistill(ChunkedHeadLoss):
    @staticmethod
    def forward(ctx, hidden, weight, bias, t_hidden, t_weight, t_bias, labels, temperature,
                ce_weight, rows):
        # hidden [n, h] (student), t_hidden [n, h_t] (teacher, no grad), weights [v, h] / [v, h_t],
        # labels [n]: the token each position predicts (IGNORE = not scored)
        scale, chunks = scored_chunks(labels, rows)
        T, w = float(temperature), float(ce_weight)
        grads = HeadGrads(ctx, hidden, weight, bias)
        div_sum = torch.zeros((), dtype=torch.float32)
        ce_sum = torch.zeros((), dtype=torch.float32)
        for start, keep in chunks:
            h = hidden[start:start + rows]
            s = F.linear(h, weight, bias).float()                                  # [c, v]
            with torch.no_grad():
                t = F.linear(t_hidden[start:start + rows], t_weight, t_bias).float()
            log_t = F.log_softmax(t if T == 1 else t.div_(T), -1)
            log_s = F.log_softmax(s if T == 1 else s / T, -1)
            p_t = log_t.exp()
            div_sum += (((p_t * (log_t - log_s)).sum(-1)) * keep).sum()
            target = labels[start:start + rows].clamp(min=0)
            if w > 0 and T == 1:  # the label term reuses log_s: (1-w)(p_s - p_t) + w(p_s - onehot)
                ce_sum += (-log_s.gather(1, target[:, None])[:, 0] * keep).sum()
                grad = log_s.exp_().sub_(p_t, alpha=1 - w)                         # [c, v]
                grad[torch.arange(grad.shape[0]), target] -= w
            else:
                grad = log_s.exp_().sub_(p_t).mul_((1 - w) * T)                   # [c, v]
                if w > 0:
                    rows_ce, soft = ce_rows_(s, target)                            # s is overwritten
                    ce_sum += (rows_ce * keep).sum()
                    grad.add_(soft, alpha=w)
            del log_t, p_t
            del s
            if grads.wanted:
                grad.mul_((keep.float() * scale)[:, None])                         # d(mean)/d logits
                grads.add(start, h, grad)
        grads.save(ctx, extra_inputs=7)
        div, ce = div_sum * scale * T ** 2, ce_sum * scale
        ctx.mark_non_differentiable(div, ce)
        return (1 - w) * div + w * ce, div, ce


def linear_distill(hidden: torch.Tensor, head: torch.nn.Linear, t_hidden: torch.Tensor,
                   t_head: torch.nn.Linear, labels: torch.Tensor, temperature: float = 1.0,
                   ce_weight: float = 0.0, rows: int | None = None):
    """(loss, forward KL, cross-entropy (0 when ce_weight is 0: not computed)) over positions whose
    label is not IGNORE, where
    loss = (1 - ce_weight) T^2 KL(softmax(t_head(t_hidden) / T) || softmax(head(hidden) / T))
    + ce_weight CE(head(hidden), labels); hidden [n, h], t_hidden [n, h_t], labels [n]. Where
    the two vocabularies differ in size (padded embedding rows) both are cut to the smaller one,
    as the plain path does. Gradients reach hidden, head.weight and head.bias only."""
    if hidden.dim() != 2 or t_hidden.shape[0] != hidden.shape[0] or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden [n, h], teacher hidden [n, h_t] and labels [n] expected, got "
                         f"{tuple(hidden.shape)}, {tuple(t_hidden.shape)} and {tuple(labels.shape)}")
    v = min(head.weight.shape[0], t_head.weight.shape[0])
    weight, t_weight = head.weight[:v], t_head.weight[:v]
    bias = None if head.bias is None else head.bias[:v]
    t_bias = None if t_head.bias is None else t_head.bias[:v]
    rows = rows or max(1, CHUNK_BYTES // (8 * v))   # ~six [rows, v] float32 temporaries at once
    return _LinearDistill.apply(hidden, weight, bias, t_hidden.detach(), t_weight.detach(),
                                None if t_bias is None else t_bias.detach(), labels, temperature,
                                ce_weight, rows)
