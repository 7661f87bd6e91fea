"""Magnitude pruning: zero the weights of smallest |W|.

Unstructured, the comparison runs over the whole matrix (the layer-wise magnitude baseline of the
SparseGPT and Wanda papers); with N:M, within every group of M consecutive inputs of a row.
No calibration data.
"""

from __future__ import annotations

import torch

from slmkit.compress.prune.nm import prune_mask


def magnitude_mask(w: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Mask (True = prune) of `w` [out, in]: the round(sparsity * numel) smallest |w|, or the
    M - N smallest of every N:M group."""
    return prune_mask(w.detach().float().abs(), sparsity, nm, per_row=False)


def magnitude(w: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """`w` [out, in] with the magnitude mask's entries set to exactly zero (float32 copy)."""
    w = w.detach().float().clone()
    w[magnitude_mask(w, sparsity, nm)] = 0
    return w
