"""Compression: the shared layer-sequential calibration loop and target selection (methods —
quantization, pruning, low-rank — build on these)."""
