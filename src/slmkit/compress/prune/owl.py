"""OWL, outlier-weighed layerwise sparsity (Yin et al., 2023): layers holding more outliers keep
more of their weights.

Per decoder layer l, the Wanda metric A = |W_ij| * ||X_j||_2 of all its pruned matrices together
gives the outlier ratio D_l = fraction of entries with A > M * mean(A) (M = `owl_m`, the paper's
"M", default 5). Ratios are normalised over the layers to [0, 1] and mapped to sparsities

    S_l = S - 2 * lambda * (D^_l - mean(D^)),   D^_l = (D_l - min D) / (max D - min D)

(as the OWL reference code and llm-compressor's `sparsity_profile="owl"` do): the mean over layers
is exactly the target S, the spread max - min is 2 * lambda (the paper's [S - lambda, S + lambda]
when outliers are spread evenly), and the layer with the most outliers gets the lowest sparsity.
All decoder layers have the same parameter count, so the model's sparsity is S too.
"""

from __future__ import annotations

import torch

from slmkit.errors import SlmkitError


def outlier_ratio(metric: torch.Tensor, m: float) -> float:
    """Fraction of entries of `metric` (any shape; a layer's Wanda metrics) above m x their mean."""
    metric = metric.detach().float().reshape(-1)
    return float((metric > m * metric.mean()).float().mean())


def owl_sparsities(ratios: list[float], target: float, lam: float) -> list[float]:
    """Per-layer sparsities (mean `target`, spread 2 * `lam`) from per-layer outlier ratios;
    uniform when every layer has the same ratio. Refuses results outside [0, 1)."""
    if not ratios:
        return []
    lo, hi = min(ratios), max(ratios)
    if hi == lo:
        return [target] * len(ratios)
    scaled = [(r - lo) / (hi - lo) * 2 * lam for r in ratios]
    mean = sum(scaled) / len(scaled)
    out = [target - (x - mean) for x in scaled]
    if min(out) < 0 or max(out) >= 1:
        raise SlmkitError(f"OWL with sparsity {target} and owl_lambda {lam} asks some layer for "
                          f"sparsity {min(out):.3f}..{max(out):.3f}, outside [0, 1); "
                          "lower owl_lambda")
    return out
