"""SparseGPT (Frantar & Alistarh, 2023): prune W column by column and, like GPTQ, spread each
pruned weight's error over the not-yet-visited columns through the inverse Hessian of the layer's
inputs, so the layer's outputs on calibration data move as little as possible.

    H = 2 X^T X / n   (X: the layer's calibration inputs, [n, in]),   U = chol(H^-1) upper

Pruning w_ij costs (OBS) w_ij^2 / U_jj^2, measured on the weights as updated so far. The mask is
chosen adaptively, as in the paper and its reference code:
- unstructured: at the start of each block of `block_size` columns, the lowest-cost entries of
  the whole block (all rows together); the block's count is its share of round(s * numel), so
  the matrix gets exactly that many zeros (`scope="block"`). `scope="row_global"` chooses within
  each output row instead, as Wanda does: each row gets its share of the matrix's count, split
  over the blocks by the row's initial costs (the blocks where the row's weights are cheap to
  prune lose more), the mask of each block still chosen at its start on the updated weights;
- N:M: at the start of every group of M columns, the M - N lowest-cost entries of each row.
Pruned weights become exact zeros; the others absorb the compensation ("lazy" updates: within
a block column by column, to later blocks once per block, as GPTQ).
"""

from __future__ import annotations

import torch

from slmkit.compress.prune.config import MASK_SCOPES
from slmkit.compress.prune.nm import check_divisible, lowest_mask, lowest_per_row, row_mask, split_count
from slmkit.compress.quantize.gptq import inverse_cholesky, prepare_hessian
from slmkit.errors import SlmkitError


def sparsegpt(w: torch.Tensor, hessian: torch.Tensor, sparsity: float,
              nm: tuple[int, int] | None = None, block_size: int = 128,
              damp: float = 0.01, scope: str = "block") -> torch.Tensor:
    """`w` [out, in] pruned to `sparsity` (or the N:M pattern `nm`) with OBS weight updates;
    `hessian` [in, in] = 2 X^T X / n. Returns a float32 [out, in] tensor with exact zeros.

    `damp`: fraction of mean(diag H) added to H's diagonal; inputs that never fire (diag H = 0)
    have their weights zeroed (they are free to prune: cost 0).
    `scope` (unstructured only): "block" (the paper) or "row_global" (see the module doc)."""
    if block_size < 1:
        raise SlmkitError(f"SparseGPT block_size must be >= 1, not {block_size}")
    if scope not in MASK_SCOPES:
        raise SlmkitError(f"SparseGPT mask scope must be one of {MASK_SCOPES}, not {scope!r}")
    W, H = prepare_hessian(w, hessian, damp, "SparseGPT")             # [out, in], [in, in]
    rows, cols = W.shape
    if nm is not None:
        check_divisible(cols, nm[1])
        if block_size % nm[1]:
            raise SlmkitError(f"SparseGPT block_size ({block_size}) must be a multiple of M={nm[1]} "
                              "so no N:M group straddles two blocks")
    U = inverse_cholesky(H, damp, "SparseGPT")                        # [in, in] upper
    starts = list(range(0, cols, block_size))
    sizes = [min(block_size, cols - i1) * rows for i1 in starts]
    counts = split_count(sizes, sparsity)                             # pruned per block
    if nm is None and scope == "row_global":                          # each row's count per block
        budget = row_mask(W ** 2 / torch.diag(U)[None, :] ** 2, sparsity)  # [out, in]

    for i1, k in zip(starts, counts):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()                                      # [out, b]
        U1 = U[i1:i2, i1:i2]                                          # [b, b]
        d = torch.diag(U1)                                            # [b]
        Err1 = torch.zeros_like(W1)                                   # [out, b]
        if nm is None:
            cost = W1 ** 2 / d[None, :] ** 2                          # [out, b]
            if scope == "block":
                mask1 = lowest_mask(cost, k)
            else:
                mask1 = lowest_per_row(cost, budget[:, i1:i2].sum(1))
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                cost = W1[:, i:i + m] ** 2 / d[None, i:i + m] ** 2    # [out, m]
                idx = torch.topk(cost, m - n, dim=1, largest=False).indices
                mask1[:, i:i + m].scatter_(1, idx, True)
            col = W1[:, i]                                            # [out]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            err = (col - q) / U1[i, i]                                # [out]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            W1[:, i] = q                                              # exact zeros stay zeros
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W
