"""Low-rank linear layers (y = up(down(x))) and the records that rebuild them when a saved
low-rank model loads (`slmkit.json` lists each replaced layer)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """y = up(down(x)): `down` [in -> r] then `up` [r -> out] (with the original bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, B: torch.Tensor, A: torch.Tensor, bias: torch.Tensor | None,
                     dtype: torch.dtype) -> "LowRankLinear":
        m = cls(A.shape[1], B.shape[0], A.shape[0], bias is not None)
        with torch.no_grad():
            m.down.weight.copy_(A)
            m.up.weight.copy_(B)
            if bias is not None:
                m.up.bias.copy_(bias)
        return m.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def dense_weight(self) -> torch.Tensor:
        return self.up.weight.float() @ self.down.weight.float()


@dataclass
class Factorized:
    """Record of one replaced layer (goes into slmkit.json so `slmkit.models.load` can rebuild)."""
    name: str
    rank: int
    in_features: int
    out_features: int
    bias: bool


def rebuild_lowrank(model, records: list[dict]) -> None:
    """Swap in empty LowRankLinear shells for the layers `records` (from slmkit.json) list."""
    for r in records:
        f = Factorized(**r)
        shell = LowRankLinear(f.in_features, f.out_features, f.rank, f.bias)
        model.set_submodule(f.name, shell.to(next(model.parameters()).dtype))
