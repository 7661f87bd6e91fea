"""Next-token cross-entropy computed from the last hidden states, the output head applied in row
chunks, so the full [tokens, vocab] logits never exist.

The plain path (`model(...).logits` then `F.cross_entropy`) holds the float32 logits, their
log-softmax and their gradient at once: for 4 x 512 tokens and SmolLM2's 49,152-token vocabulary
that is 3 x 403 MB, for Qwen's 151,936 tokens 3 x 1.2 GB -- most of a small model's training
memory. Here each chunk of rows gets its logits, its loss and, in the same pass, the gradients
with respect to the hidden states and the head weight (the softmax minus the one-hot target
times the head), as the "fused linear cross-entropy" kernels of Liger-Kernel and Apple's
Cut-Cross-Entropy do; backward then only scales the stored gradients. The work is the plain
path's (the same three matmuls with the head); the memory is one chunk of logits.

`head_of(model)` says whether a model qualifies: its decoder and output head are reachable
(`get_decoder()`, `get_output_embeddings()`), the head is a plain `nn.Linear` and the config
applies nothing to the logits after it (no soft-capping, no logit scale). The caller still
checks once per model that decoder + head reproduce `model(...).logits` (`CausalLM`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from slmkit.errors import SlmkitError
from slmkit.train.data import IGNORE

if TYPE_CHECKING:
    from torch import nn

CHUNK_BYTES = 128 * 2 ** 20      # float32 logits of one chunk of rows
# config attributes that change the logits after the head (Gemma 2 soft-capping, Cohere's
# logit_scale, Granite's logits_scaling): a model with any of them set takes the plain path
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def head_of(model) -> "tuple[nn.Module, nn.Linear] | None":
    """(decoder, head) when `model`'s logits are exactly head(decoder(...).last_hidden_state);
    None when the structure says otherwise (or cannot be seen, e.g. through a DDP wrapper)."""
    from torch import nn

    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or decoder is model or type(head) is not nn.Linear:
        return None
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return None
    return decoder, head


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def scored_chunks(labels: torch.Tensor, rows: int):
    """(1 / number of scored positions, [(start, keep [c])] for every chunk of `rows` positions
    of labels [n] with at least one scored label (IGNORE = not scored))."""
    valid = labels != IGNORE
    chunks = [(start, valid[start:start + rows]) for start in range(0, labels.shape[0], rows)]
    return 1.0 / max(int(valid.sum()), 1), [(start, keep) for start, keep in chunks if keep.any()]


def ce_rows_(logits: torch.Tensor, target: torch.Tensor,
             grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row cross-entropy [c] of float32 logits [c, v] against target [c], and (with `grad`)
    its gradient softmax(logits) - onehot(target), computed in place in `logits`."""
    lse = logits.logsumexp(-1)                                             # [c]
    loss = lse - logits.gather(1, target[:, None])[:, 0]
    if not grad:
        return loss, None
    soft = logits.sub_(lse[:, None]).exp_()                                # softmax, in place
    soft[torch.arange(soft.shape[0]), target] -= 1.0
    return loss, soft


def check_soft_ids(soft_ids: torch.Tensor, vocab: int) -> None:
    """Refuse soft-target ids a `vocab`-token head cannot score (before a gather fails deep in torch)."""
    if soft_ids.numel() and int(soft_ids.max()) >= vocab:
        raise SlmkitError(f"soft target token id {int(soft_ids.max())} is outside the model's "
                          f"{vocab}-token head: were the targets made by a model with another vocabulary?")


def soft_mix(soft_probs: torch.Tensor, soft_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha [c, 1], q [c, k]) for soft_probs [c, k]: alpha is soft_weight where a row has soft
    targets (probs not all zero) and 0 elsewhere; q is the probs renormalised to sum to alpha."""
    mass = soft_probs.float().sum(-1, keepdim=True)
    alpha = torch.where(mass > 0, float(soft_weight), 0.0)
    return alpha, soft_probs.float() * (alpha / mass.clamp(min=1e-12))


def soft_ce_rows_(logits: torch.Tensor, target: torch.Tensor, soft_ids: torch.Tensor,
                  soft_probs: torch.Tensor, soft_weight: float,
                  grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`ce_rows_` against a mixed target: on a row whose soft_probs [c, k] are not all zero, the
    target distribution is (1 - soft_weight) onehot(target) + soft_weight q, with q the soft_probs
    renormalised over their ids soft_ids [c, k] (a teacher's top-k distribution); other rows keep
    onehot(target). Loss lse - sum_j target_j logits_j, gradient softmax(logits) - target."""
    alpha, q = soft_mix(soft_probs, soft_weight)
    lse = logits.logsumexp(-1)
    picked = logits.gather(1, target[:, None])[:, 0]
    loss = lse - (1 - alpha[:, 0]) * picked - (q * logits.gather(1, soft_ids)).sum(-1)
    if not grad:
        return loss, None
    soft = logits.sub_(lse[:, None]).exp_()                                # softmax, in place
    soft[torch.arange(soft.shape[0]), target] -= 1 - alpha[:, 0]
    soft.scatter_add_(1, soft_ids, -q)
    return loss, soft


class HeadGrads:
    """Gradients of a loss on head(hidden) with respect to hidden [n, h], the head's weight [v, h]
    and bias [v], accumulated chunk by chunk from each chunk's d loss / d logits."""

    def __init__(self, ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        self.want_h, self.want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        self.want_b = bias is not None and ctx.needs_input_grad[2]
        self.weight = weight
        self.h = torch.zeros_like(hidden) if self.want_h else None
        self.w = torch.zeros(weight.shape, dtype=torch.float32) if self.want_w else None
        self.b = torch.zeros(weight.shape[0], dtype=torch.float32) if self.want_b else None
        self.dtypes = (weight.dtype, None if bias is None else bias.dtype)

    @property
    def wanted(self) -> bool:
        return self.want_h or self.want_w or self.want_b

    def add(self, start: int, h: torch.Tensor, grad: torch.Tensor) -> None:
        """Chunk rows start.. with inputs h [c, h] and d loss / d logits grad [c, v] (float32)."""
        # under bf16 autocast the two matmuls run in bf16, as the plain path's backward does
        low = torch.is_autocast_enabled("cpu")
        if self.want_h:
            gh = torch.mm(grad, self.weight) if low else grad @ self.weight.float()
            self.h[start:start + h.shape[0]] = gh.to(self.h.dtype)
        if self.want_w:
            self.w += (torch.mm(grad.T, h) if low else grad.T @ h.float()).float()
        if self.want_b:
            self.b += grad.sum(0)

    def save(self, ctx, extra_inputs: int) -> None:
        ctx.save_for_backward(self.h, self.w, self.b)
        ctx.dtypes, ctx.extra_inputs = self.dtypes, extra_inputs


class ChunkedHeadLoss(torch.autograd.Function):
    """Base of the chunked head losses: forward computes the loss and, in the same pass, its
    gradients (`HeadGrads`); backward only scales them by the incoming gradient of the first
    output (hidden, weight, bias are the first three inputs; `extra_inputs` more get None)."""

    @staticmethod
    def backward(ctx, g, *_):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        return (None if grad_h is None else grad_h * g.to(grad_h.dtype),
                None if grad_w is None else (grad_w * g).to(w_dtype),
                None if grad_b is None else (grad_b * g).to(b_dtype),
                *([None] * ctx.extra_inputs))


class _LinearCrossEntropy(ChunkedHeadLoss):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows, soft_ids, soft_probs, soft_weight):
        # hidden [n, h], weight [v, h], bias [v] or None, labels [n] (IGNORE = not scored),
        # soft_ids / soft_probs [n, k] or None (see `soft_ce_rows_`)
        scale, chunks = scored_chunks(labels, rows)
        grads = HeadGrads(ctx, hidden, weight, bias)
        total = torch.zeros((), dtype=torch.float32)
        for start, keep in chunks:
            h = hidden[start:start + rows]
            target = labels[start:start + rows].clamp(min=0)
            logits = F.linear(h, weight, bias).float()                    # [c, v]
            if soft_ids is None:
                rows_loss, grad = ce_rows_(logits, target, grads.wanted)
            else:
                rows_loss, grad = soft_ce_rows_(logits, target, soft_ids[start:start + rows],
                                                soft_probs[start:start + rows], soft_weight, grads.wanted)
            total += (rows_loss * keep).sum()
            if grad is None:
                continue
            grad.mul_((keep.float() * scale)[:, None])                    # d(mean loss)/d logits
            grads.add(start, h, grad)
        grads.save(ctx, extra_inputs=5)
        return total * scale


def linear_cross_entropy(hidden: torch.Tensor, head: "nn.Linear", labels: torch.Tensor,
                         rows: int | None = None, soft: "tuple[torch.Tensor, torch.Tensor] | None" = None,
                         soft_weight: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of head(hidden) [n, vocab] against labels [n] (IGNORE rows not scored;
    0 when none is scored), without materialising the logits beyond `rows` rows at a time
    (default: 128 MB of float32 logits). Gradients reach hidden, head.weight and head.bias.
    `soft` = (ids [n, k], probs [n, k]): where a position's probs are not all zero, its target is
    (1 - soft_weight) onehot(label) + soft_weight x the renormalised probs (`soft_ce_rows_`)."""
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden [n, h] and labels [n] expected, got {tuple(hidden.shape)} "
                         f"and {tuple(labels.shape)}")
    if soft is not None and not (soft[0].shape == soft[1].shape and soft[0].shape[:1] == labels.shape):
        raise ValueError(f"soft ids and probs [n, k] expected for {labels.shape[0]} positions, got "
                         f"{tuple(soft[0].shape)} and {tuple(soft[1].shape)}")
    if soft is not None:
        check_soft_ids(soft[0], head.weight.shape[0])
    rows = rows or chunk_rows(head.weight.shape[0])
    soft_ids, soft_probs = (None, None) if soft is None or not soft_weight else soft
    return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, labels, rows,
                                     None if soft_ids is None else soft_ids.long(), soft_probs,
                                     float(soft_weight))


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels [b, t] -> [b, t] where position i holds labels[:, i + 1] (the token position i
    predicts) and the last position is IGNORE: scoring every position against these is the
    shifted next-token loss, with no copy of the logits."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def checked_head(model, batch: dict, checked: dict[int, bool]):
    """`head_of(model)` once it has been checked, on the first 16 tokens of `batch`'s first row,
    that decoder + head reproduce `model(...).logits` (cached in `checked` by model id); None when
    the structure or the check says the model must take the plain path."""
    parts = head_of(model)
    if parts is None:
        return None
    key = id(model)
    if key not in checked:
        ids = batch["input_ids"][:1, :16]
        mask = batch.get("attention_mask")
        mask = None if mask is None else mask[:1, :16]
        was_training = model.training
        model.eval()                # dropout off, so the two forwards are comparable
        try:
            with torch.no_grad():
                ref = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
                hs = parts[0](input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                mine = parts[1](hs).float()
        finally:
            model.train(was_training)
        checked[key] = mine.shape == ref.shape and torch.allclose(mine, ref, rtol=1e-3, atol=1e-3)
    return parts if checked[key] else None
