"""Training batches that are a pure function of their index, so a resumed run sees exactly the
data the uninterrupted run would have: micro-batch i of a run comes from epoch i // per_epoch,
whose row order is a permutation seeded by (seed, epoch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from slmkit.errors import SlmkitError

if TYPE_CHECKING:
    import torch

IGNORE = -100  # label of a position that is not scored (prompt tokens, padding)


@dataclass
class Batches:
    """Rows of token ids [n, length], optional labels [n, length] (IGNORE = not scored; default:
    the ids themselves, i.e. plain language modelling) and attention mask [n, length].

    Optional soft targets, soft_ids [n, length, k] and soft_probs [n, length, k]: at position i,
    a teacher's top-k next-token ids and probabilities for the token at i + 1 (all-zero probs: the
    row or position has none), e.g. recorded while the teacher wrote the row
    (`slmkit.generate.selfgen`); `CausalLM(soft_weight=...)` mixes them into its targets."""

    ids: "torch.Tensor"
    labels: "torch.Tensor | None" = None
    attention_mask: "torch.Tensor | None" = None
    soft_ids: "torch.Tensor | None" = None
    soft_probs: "torch.Tensor | None" = None

    def __post_init__(self) -> None:
        if self.ids.ndim != 2 or self.ids.shape[0] < 1 or self.ids.shape[1] < 2:
            raise SlmkitError(f"training ids must be [n >= 1, length >= 2], got {tuple(self.ids.shape)}")
        for name in ("labels", "attention_mask"):
            t = getattr(self, name)
            if t is not None and t.shape != self.ids.shape:
                raise SlmkitError(f"training {name} {tuple(t.shape)} must match ids {tuple(self.ids.shape)}")
        if (self.soft_ids is None) != (self.soft_probs is None):
            raise SlmkitError("soft targets need both soft_ids and soft_probs")
        if self.soft_ids is not None and not (
                self.soft_ids.shape == self.soft_probs.shape and self.soft_ids.ndim == 3
                and self.soft_ids.shape[:2] == self.ids.shape):
            raise SlmkitError(f"soft_ids {tuple(self.soft_ids.shape)} and soft_probs "
                              f"{tuple(self.soft_probs.shape)} must both be [n, length, k] with "
                              f"[n, length] = {tuple(self.ids.shape)}")

    def __len__(self) -> int:
        return self.ids.shape[0]

    def head(self, n: int) -> "Batches":
        """The first `n` rows."""
        cut = lambda t: None if t is None else t[:n]  # noqa: E731
        return Batches(self.ids[:n], cut(self.labels), cut(self.attention_mask), cut(self.soft_ids),
                       cut(self.soft_probs))

    def per_epoch(self, size: int, world: int = 1) -> int:
        """Micro-batches per epoch (each process takes `size` rows of every micro-batch)."""
        n = len(self) // (size * world)
        if n == 0:
            raise SlmkitError(f"{len(self)} training sequences are fewer than one batch of "
                              f"{size} x {world} process(es); lower batch_size or add data")
        return n

    def batch(self, index: int, size: int, seed: int, rank: int = 0, world: int = 1) -> dict:
        """Micro-batch `index` (counted from the start of training) for process `rank`."""
        import torch

        per = self.per_epoch(size, world)
        epoch, j = divmod(index, per)
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        start = (j * world + rank) * size
        rows = order[start: start + size]
        out = {"input_ids": self.ids[rows]}
        out["labels"] = self.labels[rows] if self.labels is not None else out["input_ids"]
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask[rows]
        if self.soft_ids is not None:
            out["soft_ids"], out["soft_probs"] = self.soft_ids[rows], self.soft_probs[rows]
        return out

    def tokens(self, batch: dict) -> int:
        """Tokens the model reads in `batch` (padding excluded)."""
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else batch["input_ids"].numel()
