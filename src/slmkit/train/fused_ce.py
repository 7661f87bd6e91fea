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


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows):
        # hidden [n, h], weight [v, h], bias [v] or None, labels [n] (IGNORE = not scored)
        valid = labels != IGNORE
        count = int(valid.sum())
        scale = 1.0 / max(count, 1)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32) if want_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32) if want_b else None
        total = torch.zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], rows):
            keep = valid[start:start + rows]
            if not keep.any():
                continue
            h = hidden[start:start + rows]
            target = labels[start:start + rows].clamp(min=0)
            logits = F.linear(h, weight, bias).float()                    # [c, v]
            lse = logits.logsumexp(-1)                                     # [c]
            picked = logits.gather(1, target[:, None])[:, 0]
            total += ((lse - picked) * keep).sum()
            if not (want_h or want_w or want_b):
                continue
            grad = logits.sub_(lse[:, None]).exp_()                        # softmax, in place
            grad[torch.arange(grad.shape[0]), target] -= 1.0
            grad.mul_((keep.float() * scale)[:, None])                    # d(mean loss)/d logits
            # under bf16 autocast the two matmuls run in bf16, as the plain path's backward does
            low = torch.is_autocast_enabled("cpu")
            if want_h:
                gh = torch.mm(grad, weight) if low else grad @ weight.float()
                grad_h[start:start + rows] = gh.to(hidden.dtype)
            if want_w:
                grad_w += (torch.mm(grad.T, h) if low else grad.T @ h.float()).float()
            if want_b:
                grad_b += grad.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total * scale

    @staticmethod
    def backward(ctx, g):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        return (None if grad_h is None else grad_h * g.to(grad_h.dtype),
                None if grad_w is None else (grad_w * g).to(w_dtype),
                None if grad_b is None else (grad_b * g).to(b_dtype),
                None, None)


def linear_cross_entropy(hidden: torch.Tensor, head: "nn.Linear", labels: torch.Tensor,
                         rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of head(hidden) [n, vocab] against labels [n] (IGNORE rows not scored;
    0 when none is scored), without materialising the logits beyond `rows` rows at a time
    (default: 128 MB of float32 logits). Gradients reach hidden, head.weight and head.bias."""
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden [n, h] and labels [n] expected, got {tuple(hidden.shape)} "
                         f"and {tuple(labels.shape)}")
    rows = rows or chunk_rows(head.weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, labels, rows)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels [b, t] -> [b, t] where position i holds labels[:, i + 1] (the token position i
    predicts) and the last position is IGNORE: scoring every position against these is the
    shifted next-token loss, with no copy of the logits."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)
