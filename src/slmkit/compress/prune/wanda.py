"""Wanda (Sun et al., 2023): prune by |W_ij| * ||X_j||_2 — a weight's magnitude times the L2 norm
of its input feature over the calibration tokens — compared within each output row (the paper's
"per output" groups), or within each N:M group of a row. No weight update.

The norm's scale does not matter (only comparisons within a row), so any running mean of
squared inputs works: `norms` = sqrt(mean over tokens of x_j^2) is what slmkit collects.
"""

from __future__ import annotations

import torch

from slmkit.compress.prune.nm import prune_mask
from slmkit.errors import SlmkitError


def wanda_metric(w: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j|| as float32 [out, in]; `w` [out, in], `norms` [in] (input feature L2 norms)."""
    if norms.shape != (w.shape[1],):
        raise SlmkitError(f"Wanda: {norms.shape[0] if norms.ndim else 0} input norms for a weight "
                          f"with {w.shape[1]} input columns")
    return w.detach().float().abs() * norms.float()[None, :]


def wanda_mask(w: torch.Tensor, norms: torch.Tensor, sparsity: float,
               nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Mask (True = prune) of `w` [out, in]: the lowest `sparsity` of each row's Wanda metric
    (rows get floor/ceil counts adding up to round(sparsity * numel)), or the M - N lowest of
    every N:M group."""
    return prune_mask(wanda_metric(w, norms), sparsity, nm, per_row=True)


def wanda(w: torch.Tensor, norms: torch.Tensor, sparsity: float,
          nm: tuple[int, int] | None = None) -> torch.Tensor:
    """`w` [out, in] with the Wanda mask's entries set to exactly zero (float32 copy)."""
    w = w.detach().float().clone()
    w[wanda_mask(w, norms, sparsity, nm)] = 0
    return w
