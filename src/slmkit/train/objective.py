"""What the loop optimizes: an objective maps (model, batch) to a scalar loss plus metrics.

Objectives are plain objects with `loss(model, batch) -> (loss, {name: float})` and
`parameters()` (extra trainable tensors, e.g. a hidden-state projection; usually none). The
causal-LM objective lives here; distillation objectives in `slmkit.distill`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from slmkit.train.data import IGNORE

if TYPE_CHECKING:
    import torch


class Objective(Protocol):
    def loss(self, model, batch: dict) -> tuple["torch.Tensor", dict[str, float]]: ...

    def parameters(self) -> list["torch.nn.Parameter"]: ...


def shifted_ce(logits: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
    """Mean next-token cross-entropy: logits [b, t, v] at position i predict labels[:, i + 1];
    positions labelled IGNORE are not scored. The labels are shifted, not the logits, so no
    copy of the logits is made."""
    import torch.nn.functional as F

    from slmkit.train.fused_ce import shift_labels

    return F.cross_entropy(logits.flatten(0, 1).float(), shift_labels(labels).flatten(),
                           ignore_index=IGNORE)


class CausalLM:
    """Cross-entropy on the batch's labels (plain LM, or SFT when prompt tokens are IGNORE).

    `fused=True` (default) computes the loss from the decoder's last hidden states with the
    output head applied in chunks (`slmkit.train.fused_ce`), never holding the full logits,
    for models whose structure allows it; others (and DDP-wrapped models) take the plain path.
    The first batch of each model checks that both paths give the same logits."""

    def __init__(self, fused: bool = True):
        self.fused = fused
        self._checked: dict[int, bool] = {}

    def _fused_parts(self, model, batch):
        from slmkit.train.fused_ce import checked_head

        return checked_head(model, batch, self._checked) if self.fused else None

    def loss(self, model, batch: dict):
        parts = self._fused_parts(model, batch)
        if parts is None:
            out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        use_cache=False)
            ce = shifted_ce(out.logits, batch["labels"])
        else:
            from slmkit.train.fused_ce import linear_cross_entropy, shift_labels

            decoder, head = parts
            hs = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                         use_cache=False).last_hidden_state
            ce = linear_cross_entropy(hs.flatten(0, 1), head, shift_labels(batch["labels"]).flatten())
        return ce, {"ce": float(ce.detach())}

    def parameters(self) -> list:
        return []
