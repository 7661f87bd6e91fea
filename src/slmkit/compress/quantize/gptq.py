"""GPTQ (Frantar et al., 2023): quantize W column by column, each time spreading the rounding error
over the not-yet-quantized columns through the inverse Hessian of the layer's inputs, so the layer's
outputs on calibration data move as little as possible.

    H = 2 X^T X / n   (X: the layer's calibration inputs, [n, in])

Options as in the paper and its reference code: dampening (a fraction of mean(diag H) added to the
diagonal), lazy block updates, act-order (quantize columns by decreasing diag H), static groups
(group grids fixed from the original weights, so act-order keeps contiguous groups).
"""

from __future__ import annotations

import warnings

import torch

from slmkit.compress.quantize.grid_search import search_grid
from slmkit.errors import SlmkitError
from slmkit.runtime.qweight import (
    QuantizedWeight,
    check_bits,
    grid,
    group_index,
    make_weight,
    quantize_column,
    storable,
    two_level,
)


def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = 128,
         symmetric: bool = False, damp: float = 0.01, block_size: int = 128,
         act_order: bool = False, static_groups: bool = False,
         clip_search: bool = False, clip_floor: float = 0.0) -> QuantizedWeight:
    """GPTQ of w [out, in] given the inputs' Hessian X^T X [in, in] -> its QuantizedWeight.
    clip_search: each group's range is shrunk to the clipping with the least rounding error
    (`grid_search.search_grid`) instead of min/max. clip_floor: that search weighs column j's
    rounding error by diag(H)_j + clip_floor * mean(diag H), so columns the calibration text
    leaves quiet still count (0 = diag H alone)."""
    check_bits(bits, group_size)
    W, H = prepare_hessian(w, hessian, damp, "GPTQ")
    rows, cols = W.shape
    g = group_size or cols
    n_groups = -(-cols // g)

    check_clip_floor(clip_floor)
    importance = torch.diag(H)
    importance = importance + clip_floor * importance.mean()

    def make_grid(w_group: torch.Tensor, cols_of: torch.Tensor):
        if clip_search:
            return search_grid(w_group, bits, symmetric, importance[cols_of])
        return grid(w_group, bits, symmetric)

    static = None
    if static_groups:
        static = [make_grid(W[:, j * g: min((j + 1) * g, cols)], torch.arange(j * g, min((j + 1) * g, cols)))
                  for j in range(n_groups)]
        scales, zeros = storable(torch.stack([s for s, _ in static], 1),
                                 torch.stack([z for _, z in static], 1), bits, group_size, symmetric)
        static = [(scales[:, j], zeros[:, j]) for j in range(n_groups)]
    elif two_level(bits, group_size, symmetric):
        raise SlmkitError("GGUF's K-quant grids set each group's scale from its whole 256-weight "
                          "block: use static_groups=True")
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]

    Hinv = inverse_cholesky(H, damp, "GPTQ")

    Q = torch.zeros_like(W)
    scale = torch.zeros(rows, n_groups)
    zero = torch.zeros(rows, n_groups)
    current = None  # (scale, zero) of the group being filled (dynamic groups)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = int(perm[i1 + i])          # original column index
            # the group's slot: by original column (static groups, or no act-order, where the two
            # orders agree) or by quantization order (dynamic groups under act-order)
            j = col // g if static is not None or not act_order else (i1 + i) // g
            if static is not None:
                s, z = static[j]
            else:
                if (i1 + i) % g == 0:         # first column of a new group (in quantization order)
                    span = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]
                    current = make_grid(span, perm[i1 + i: i1 + i + span.shape[1]])
                s, z = current
            scale[:, j], zero[:, j] = s, z
            w_col = W1[:, i]
            q = quantize_column(w_col, s, z, bits)
            deq = (q - z) * s
            Q[:, i1 + i] = q
            err = (w_col - deq) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    inv = torch.argsort(perm)
    Q = Q[:, inv]
    if act_order and static is None:
        g_idx = inv // g  # a column's group is set by its position in quantization order
    else:
        g_idx = group_index(cols, group_size)
    return make_weight(Q.to(torch.uint8), scale, zero, g_idx, bits, group_size, symmetric)


def check_damp(damp: float, method: str) -> None:
    if not 0 < damp < 1:
        raise SlmkitError(f"{method} dampening must be in (0, 1), not {damp!r}")


def check_clip_floor(clip_floor: float) -> None:
    if not clip_floor >= 0:
        raise SlmkitError(f"GPTQ clip_floor must be >= 0, not {clip_floor!r}")


def prepare_hessian(w: torch.Tensor, hessian: torch.Tensor, damp: float,
                    method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked float32 copies (W [out, in], H [in, in]) for a Hessian-based method (GPTQ,
    SparseGPT): inputs that never fire ("dead", diag H == 0) get H_jj = 1 and their weights 0."""
    check_damp(damp, method)
    W = w.detach().float().clone()
    cols = W.shape[1]
    if hessian.shape != (cols, cols):
        raise SlmkitError(f"Hessian is {tuple(hessian.shape)} but the weight has {cols} input columns")
    H = hessian.detach().float().clone()
    if not torch.isfinite(H).all():
        raise SlmkitError("the Hessian has non-finite entries (inf/nan activations in calibration); "
                          "check the model in float32 or use other calibration text")
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H


def inverse_cholesky(H: torch.Tensor, damp: float, method: str) -> torch.Tensor:
    """Upper Cholesky factor U of (H + d * mean(diag H) * I)^-1 [in, in] (U^T U = H^-1), as the
    GPTQ/SparseGPT reference codes use it: row i of U holds the update coefficients of column i.
    d = damp, or 10x/100x/1000x more (with a warning) if H is not positive definite."""
    cols = H.shape[0]
    for attempt in range(4):  # dampen more (and warn) rather than fail on a borderline Hessian
        d = damp * 10 ** attempt
        try:
            L = torch.linalg.cholesky(H + d * torch.mean(torch.diag(H)) * torch.eye(cols))
            Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
        except torch.linalg.LinAlgError:
            continue
        if d != damp:
            warnings.warn(f"{method}: Hessian not positive definite with damp={damp:g}; used {d:g}",
                          stacklevel=3)
        return Hinv
    raise SlmkitError(f"the Hessian is not positive definite even with damp={d:g}; "
                      "calibrate on more (or more varied) text")
