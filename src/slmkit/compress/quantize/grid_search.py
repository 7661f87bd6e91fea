"""The MSE grid search shared by GPTQ and AWQ: each row's range shrunk to the factor that
minimises its importance-weighted rounding error. The grid itself is `slmkit.runtime.qweight`."""

from __future__ import annotations

import torch

from slmkit.runtime.qweight import GGUF_K, grid, quantize_column


def search_grid(w: torch.Tensor, bits: int, symmetric: bool, importance: torch.Tensor | None = None,
                min_shrink: float = 0.75, steps: int = 26) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `grid`, but each row's range is shrunk by the factor in linspace(1, min_shrink, steps)
    that minimises its rounding error sum_j importance_j (w_j - deq_j)^2 (importance: e.g. diag H,
    the squared input magnitude of column j; None = all ones). Clipping a few outliers buys a
    finer grid for all other weights (the "mse" grid of the GPTQ reference code)."""
    w = w.float()
    imp = torch.ones(w.shape[1]) if importance is None else importance.float()
    if symmetric == GGUF_K:
        return search_min_scale(w, bits, imp)
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


def search_min_scale(w: torch.Tensor, bits: int, imp: torch.Tensor, steps: int = 21,
                     stretch: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero per row of `w` [rows, cols] on a grid with a free min (GGUF's Q4_K / Q5_K:
    values q * scale + min, min <= 0): for each of `steps` code assignments (the min/max grid's
    codes per unit stretched by -stretch .. +stretch levels over the range), the weighted
    least-squares scale and min of those codes, sum_j imp_j (w_j - q_j * scale - min)^2, keeping
    the one with the least error (llama.cpp's `make_qkx2_quants` search)."""
    maxq = 2 ** bits - 1
    lo, hi = w.amin(dim=1, keepdim=True).clamp(max=0), w.amax(dim=1, keepdim=True)
    span = (hi - lo).clamp(min=1e-12)
    wt = imp[None, :].expand_as(w)
    sw, sx = wt.sum(1, keepdim=True), (wt * w).sum(1, keepdim=True)
    best_s, best_m = span / maxq, lo
    best_err = (wt * (w - (torch.round((w - lo) / best_s).clamp(0, maxq) * best_s + lo)) ** 2).sum(1, keepdim=True)
    for k in torch.linspace(-stretch, stretch, steps).tolist():
        q = torch.round((w - lo) * ((maxq + k) / span)).clamp(0, maxq)
        sl, sl2, sxl = (wt * q).sum(1, keepdim=True), (wt * q * q).sum(1, keepdim=True), (wt * w * q).sum(1, keepdim=True)
        det = sw * sl2 - sl * sl
        ok = det > 0
        scale = torch.where(ok, (sw * sxl - sx * sl) / torch.where(ok, det, 1), best_s)
        mn = torch.where(ok, (sl2 * sx - sl * sxl) / torch.where(ok, det, 1), best_m)
        pos = mn > 0                          # the grid keeps 0 representable: min <= 0
        scale = torch.where(pos, sxl / sl2.clamp(min=1e-30), scale)
        mn = torch.where(pos, torch.zeros_like(mn), mn)
        ok = ok & (scale > 0)
        err = (wt * (w - (q * scale + mn)) ** 2).sum(1, keepdim=True)
        better = ok & (err < best_err)
        best_err = torch.where(better, err, best_err)
        best_s, best_m = torch.where(better, scale, best_s), torch.where(better, mn, best_m)
    return best_s[:, 0], (-best_m / best_s)[:, 0]
