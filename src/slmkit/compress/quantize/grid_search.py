"""The MSE grid search shared by GPTQ and AWQ: each row's range shrunk to the factor that
minimises its importance-weighted rounding error. The grid itself is `slmkit.runtime.qweight`."""

from __future__ import annotations

import torch

from slmkit.runtime.qweight import grid, quantize_column


def search_grid(w: torch.Tensor, bits: int, symmetric: bool, importance: torch.Tensor | None = None,
                min_shrink: float = 0.75, steps: int = 26) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `grid`, but each row's range is shrunk by the factor in linspace(1, min_shrink, steps)
    that minimises its rounding error sum_j importance_j (w_j - deq_j)^2 (importance: e.g. diag H,
    the squared input magnitude of column j; None = all ones). Clipping a few outliers buys a
    finer grid for all other weights (the "mse" grid of the GPTQ reference code)."""
    w = w.float()
    imp = torch.ones(w.shape[1]) if importance is None else importance.float()
    best_s, best_z = grid(w, bits, symmetric)
    best_err = None
    for p in torch.linspace(1.0, min_shrink, steps).tolist():
        s, z = grid(w * p, bits, symmetric)
        deq = (quantize_column(w, s[:, None], z[:, None], bits) - z[:, None]) * s[:, None]
        err = (w - deq).square_() @ imp
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z
