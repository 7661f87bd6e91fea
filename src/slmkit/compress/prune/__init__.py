"""Pruning: unstructured magnitude, Wanda and SparseGPT (uniform, OWL or N:M sparsity) — math in
magnitude.py / wanda.py / sparsegpt.py / nm.py / owl.py, lifecycle in apply.py; run them with
`slmkit.compress.api.prune(model, cfg, calib)`."""

from slmkit.compress.prune.config import MagnitudeConfig, PruneConfig, SparseGPTConfig, WandaConfig

__all__ = ["MagnitudeConfig", "PruneConfig", "SparseGPTConfig", "WandaConfig"]
