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
    positions labelled IGNORE are not scored."""
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE)


class CausalLM:
    """Cross-entropy on the batch's labels (plain LM, or SFT when prompt tokens are IGNORE)."""

    def loss(self, model, batch: dict):
        out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                    use_cache=False)
        ce = shifted_ce(out.logits, batch["labels"])
        return ce, {"ce": float(ce.detach())}

    def parameters(self) -> list:
        return []
