"""Compression: quantization (RTN, GPTQ, AWQ, SmoothQuant; integer kernels; compressed-tensors
checkpoints; GGUF export) on the shared layer-sequential calibration loop and target selection.
Pruning and low-rank build on the same loop."""

from slmkit.compress.api import LOWRANK, PRUNERS, QUANTIZERS, lowrank, pack, prune, quantize
from slmkit.compress.lowrank.apply import ASVDConfig, SVDConfig, merge_lowrank
from slmkit.compress.prune.config import MagnitudeConfig, SparseGPTConfig, WandaConfig
from slmkit.compress.prune.structured import DepthPruneConfig, WidthPruneConfig, parse_target
from slmkit.compress.quantize.awq import AWQConfig
from slmkit.compress.quantize.config import GPTQConfig, RTNConfig
from slmkit.compress.quantize.smoothquant import SmoothQuantConfig
from slmkit.models.gguf_export import export_gguf
from slmkit.runtime.modules import dequantize, is_quantized

__all__ = ["LOWRANK", "PRUNERS", "QUANTIZERS", "ASVDConfig", "AWQConfig", "SVDConfig", "lowrank",
           "merge_lowrank", "dequantize", "DepthPruneConfig", "GPTQConfig", "MagnitudeConfig",
           "RTNConfig", "WidthPruneConfig", "parse_target",
           "SmoothQuantConfig", "SparseGPTConfig", "WandaConfig", "export_gguf", "is_quantized",
           "pack", "prune", "quantize"]
