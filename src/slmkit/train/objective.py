"""What the loop optimizes: an objective maps (model, batch) to a scalar loss plus metrics.

Objectives are plain objects with `loss(model, batch) -> (loss, {name: float})` and
`parameters()` (extra trainable tensors, e.g. a hidden-state projection; usually none). The
causal-LM objective lives here; distillation objectives in `slmkit.distill`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from slmkit.errors import SlmkitError
from slmkit.train.data import IGNORE
from slmkit.train.fused_ce import check_soft_ids, checked_head, linear_cross_entropy, shift_labels, soft_mix

if TYPE_CHECKING:
    import torch


class Objective(Protocol):
    """What `train` optimises: `loss(model, batch)` -> (loss, logged values), and any extra
    `parameters()` it trains."""
    def loss(self, model, batch: dict) -> tuple["torch.Tensor", dict[str, float]]: ...

    def parameters(self) -> list["torch.nn.Parameter"]: ...


def shifted_ce(logits: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
    """Mean next-token cross-entropy: logits [b, t, v] at position i predict labels[:, i + 1];
    positions labelled IGNORE are not scored. The labels are shifted, not the logits, so no
    copy of the logits is made."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.flatten(0, 1).float(), shift_labels(labels).flatten(),
                           ignore_index=IGNORE)


def shifted_soft_ce(logits: "torch.Tensor", labels: "torch.Tensor", soft_ids: "torch.Tensor",
                    soft_probs: "torch.Tensor", soft_weight: float) -> "torch.Tensor":
    """`shifted_ce` where a position with soft targets (soft_ids / soft_probs [b, t, k], position
    i's for the token at i + 1, all-zero probs = none) is scored against (1 - soft_weight)
    onehot(label) + soft_weight x its renormalised probs (the plain path of `soft_ce_rows_`)."""
    import torch

    check_soft_ids(soft_ids, logits.shape[-1])
    target = shift_labels(labels).flatten()
    keep = target != IGNORE
    logp = torch.log_softmax(logits.flatten(0, 1).float(), -1)
    alpha, q = soft_mix(soft_probs.flatten(0, 1), soft_weight)
    rows = -(1 - alpha[:, 0]) * logp.gather(1, target.clamp(min=0)[:, None])[:, 0] \
        - (q * logp.gather(1, soft_ids.flatten(0, 1).long())).sum(-1)
    return (rows * keep).sum() / keep.sum().clamp(min=1)


class CausalLM:
    """Cross-entropy on the batch's labels (plain LM, or SFT when prompt tokens are IGNORE).

    `soft_weight` > 0: on positions where the batch carries soft targets (a teacher's top-k
    distribution recorded when it wrote the row, `Batches.soft_ids`), the target is
    (1 - soft_weight) onehot(label) + soft_weight x that distribution, i.e. distillation from
    cached teacher outputs at the cost of plain cross-entropy (no teacher forward).

    `fused=True` (default) computes the loss from the decoder's last hidden states with the
    output head applied in chunks (`slmkit.train.fused_ce`), never holding the full logits,
    for models whose structure allows it; others (and DDP-wrapped models) take the plain path.
    The first batch of each model checks that both paths give the same logits."""

    def __init__(self, fused: bool = True, soft_weight: float = 0.0):
        if not 0 <= soft_weight <= 1:
            raise SlmkitError(f"soft_weight must be in [0, 1], not {soft_weight}")
        self.fused = fused
        self.soft_weight = soft_weight
        self._checked: dict[int, bool] = {}

    def _fused_parts(self, model, batch):
        return checked_head(model, batch, self._checked) if self.fused else None

    def loss(self, model, batch: dict):
        parts = self._fused_parts(model, batch)
        soft = (batch["soft_ids"], batch["soft_probs"]) if self.soft_weight and "soft_ids" in batch else None
        if parts is None:
            out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        use_cache=False)
            ce = (shifted_ce(out.logits, batch["labels"]) if soft is None else
                  shifted_soft_ce(out.logits, batch["labels"], *soft, self.soft_weight))
        else:
            decoder, head = parts
            hs = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                         use_cache=False).last_hidden_state
            ce = linear_cross_entropy(hs.flatten(0, 1), head, shift_labels(batch["labels"]).flatten(),
                                      soft=None if soft is None else tuple(t.flatten(0, 1) for t in soft),
                                      soft_weight=self.soft_weight)
        return ce, {"ce": float(ce.detach())}

    def parameters(self) -> list:
        return []
