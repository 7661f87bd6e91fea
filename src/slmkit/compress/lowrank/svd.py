"""Low-rank factorization of linear layers: W [out, in] ~= B [out, r] @ A [r, in].

- SVD: the best rank-r approximation of W itself (Eckart-Young).
- ASVD (Yuan et al., 2023, "activation-aware SVD"): input channels that carry large activations
  matter more, so factor W S with S = diag(mean |x_j|^alpha) and undo the scaling in A:
  W ~= (U_r Sigma_r)(V_r^T S^-1). The truncation error is then measured where the inputs are.

A layer's rank for a parameter fraction f kept: r = floor(f * out * in / (out + in)); a layer
where even that would not save anything is left dense.
"""

from __future__ import annotations

import torch

from slmkit.errors import SlmkitError


def rank_for(out_features: int, in_features: int, keep: float) -> int:
    """Rank whose two factors hold `keep` x the dense parameter count."""
    return int(keep * out_features * in_features // (out_features + in_features))


def svd_factors(w: torch.Tensor, rank: int, channel_scale: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [out, r], A [r, in]) with B @ A the rank-`rank` approximation of w [out, in] in the
    norm weighted by `channel_scale` [in] (None: plain SVD)."""
    w = w.detach().float()
    if not 1 <= rank <= min(w.shape):
        raise SlmkitError(f"rank must be in [1, {min(w.shape)}] for a {tuple(w.shape)} weight, not {rank}")
    s = None
    if channel_scale is not None:
        s = channel_scale.float().clamp(min=1e-6)
        w = w * s
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    root = S[:rank].sqrt()
    B = U[:, :rank] * root                 # split sigma evenly: both factors similarly scaled
    A = root[:, None] * Vh[:rank]
    if s is not None:
        A = A / s
    return B, A
