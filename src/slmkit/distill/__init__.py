"""Distillation: divergences (`losses`), white-box objectives for the one training loop."""

from slmkit.distill.objectives import Distill, DistillConfig, check_same_tokenizer, default_layer_map

__all__ = ["Distill", "DistillConfig", "check_same_tokenizer", "default_layer_map"]
