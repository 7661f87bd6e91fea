"""Pruning masks: which entries of a score matrix to zero.

Every mask here is a bool tensor shaped like the weight, True = prune (set to zero). Scores are
"importance": the lowest scores are pruned (|W| for magnitude, |W| * ||X_j|| for Wanda,
W^2 / [H^-1]_jj^2 for SparseGPT).

N:M ("2:4", "4:8") follows NVIDIA's sparse-tensor-core convention: at most N nonzeros in every
group of M consecutive input weights of a row, so M - N of each group are pruned and the
sparsity is 1 - N/M. (llm-compressor's `mask_structure="2:4"` counts the pruned weights instead;
for 2:4 and 4:8 the two conventions give the same pattern.)

Exact counts: a sparsity s over a matrix of n entries prunes round(s * n) entries; when the
choice is made part by part (rows for Wanda, column blocks for SparseGPT), `split_count` gives
each part its share so that the parts add up to exactly that number.
"""

from __future__ import annotations

import math

import torch

from slmkit.errors import SlmkitError


def parse_nm(spec: str | None) -> tuple[int, int] | None:
    """"N:M" -> (N, M) with 1 <= N < M; None -> None (unstructured)."""
    if spec is None:
        return None
    parts = str(spec).strip().split(":")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise SlmkitError(f"N:M pattern must look like '2:4' (N nonzeros in every M weights), "
                          f"not {spec!r}") from None
    if not 1 <= n < m:
        raise SlmkitError(f"N:M pattern {spec!r}: need 1 <= N < M (N weights kept of every M), "
                          f"e.g. '2:4' or '4:8'")
    return n, m


def nm_sparsity(n: int, m: int) -> float:
    """The fraction of weights an N:M pattern prunes."""
    return 1 - n / m


def n_pruned(numel: int, sparsity: float) -> int:
    """Entries pruned out of `numel` at `sparsity` (round half up)."""
    return math.floor(sparsity * numel + 0.5)


def split_count(sizes: list[int], sparsity: float) -> list[int]:
    """Pruned entries per part (part i has sizes[i] entries), adding up to
    n_pruned(sum(sizes), sparsity): the cumulative count rounded at every part boundary."""
    out, done, total = [], 0, 0
    for size in sizes:
        total += size
        k = n_pruned(total, sparsity) - done
        out.append(k)
        done += k
    return out


def lowest_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Prune exactly the k lowest entries of `score` (any shape; ties broken by position)."""
    flat = score.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, largest=False, sorted=False).indices] = True
    return mask.reshape(score.shape)


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest entries of each row of `score` [rows, cols]; rows get
    floor or ceil(sparsity * cols) each, n_pruned(rows * cols, sparsity) in total."""
    rows, cols = score.shape
    return lowest_per_row(score, torch.tensor(split_count([cols] * rows, sparsity)))


def lowest_per_row(score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Prune the k[r] lowest entries of row r of `score` [rows, cols] (ties broken by position)."""
    order = torch.argsort(score, dim=1, stable=True)                 # [rows, cols], lowest first
    pruned = torch.arange(score.shape[1])[None, :] < k[:, None]      # [rows, cols] by rank
    return torch.zeros_like(pruned).scatter_(1, order, pruned)


def check_divisible(cols: int, m: int) -> None:
    if cols % m:
        raise SlmkitError(f"N:M pruning with M={m} needs in_features divisible by {m}, "
                          f"but this matrix has {cols}; add it to `skip`")


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the M - N lowest of every M consecutive entries of each row of `score` [rows, cols]."""
    rows, cols = score.shape
    check_divisible(cols, m)
    groups = score.reshape(rows, cols // m, m)                       # [rows, groups, m]
    idx = torch.topk(groups, m - n, dim=2, largest=False).indices    # [rows, groups, m - n]
    mask = torch.zeros(groups.shape, dtype=torch.bool).scatter_(2, idx, True)
    return mask.reshape(rows, cols)


def holds_nm(w: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of M consecutive inputs in every row of `w` [rows, cols] has at most
    N nonzeros (the pattern sparse kernels need)."""
    rows, cols = w.shape
    if cols % m:
        return False
    nonzero = (w != 0).reshape(rows, cols // m, m).sum(dim=2)        # [rows, groups]
    return bool((nonzero <= n).all())


def prune_mask(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
               per_row: bool) -> torch.Tensor:
    """The mask for `score` [rows, cols]: N:M groups if `nm`, else the lowest `sparsity` of each
    row (`per_row`) or of the whole matrix."""
    if nm is not None:
        return nm_mask(score, *nm)
    if per_row:
        return row_mask(score, sparsity)
    return lowest_mask(score, n_pruned(score.numel(), sparsity))
