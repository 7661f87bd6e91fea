"""Compression: quantization (RTN, GPTQ, AWQ, SmoothQuant; integer kernels; compressed-tensors
checkpoints; GGUF export) on the shared layer-sequential calibration loop and target selection.
Pruning and low-rank build on the same loop."""

from slmkit.compress.api import QUANTIZERS, is_quantized, pack, quantize
from slmkit.compress.quantize.awq import AWQConfig
from slmkit.compress.quantize.config import GPTQConfig, RTNConfig
from slmkit.compress.quantize.gguf_export import export_gguf
from slmkit.compress.quantize.smoothquant import SmoothQuantConfig

__all__ = ["QUANTIZERS", "AWQConfig", "GPTQConfig", "RTNConfig", "SmoothQuantConfig", "export_gguf",
           "is_quantized", "pack", "quantize"]
