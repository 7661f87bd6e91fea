"""`quantize(model, cfg, calib)`: dispatch through the registry of quantization methods.

Current state: the weights of every target linear are replaced by their dequantized grid values
(simulated quantization), which is what accuracy measurements need; the integer codes, scales and
zero points are kept on `model._slmkit_quantized` for packing. Packed storage, integer kernels and
interoperable checkpoints are the next step of the quantization work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slmkit.compress.calibrate import HessianCollector, sequential
from slmkit.compress.quantize.config import GPTQConfig, RTNConfig
from slmkit.compress.quantize.gptq import gptq
from slmkit.compress.quantize.rtn import QuantizedWeight, check_bits, rtn
from slmkit.compress.targets import Target, all_targets, layer_targets
from slmkit.errors import SlmkitError
from slmkit.registry import Registry

if TYPE_CHECKING:
    pass


def _store(t: Target, qw: QuantizedWeight, store: dict) -> None:
    t.set_weight(qw.dequantize())
    store[t.name] = qw


def apply_rtn(model, cfg: RTNConfig, calib=None):
    check_bits(cfg.bits, cfg.group_size)
    store: dict[str, QuantizedWeight] = {}
    for t in all_targets(model, tuple(cfg.skip)):
        _store(t, rtn(t.weight(), cfg.bits, cfg.group_size, cfg.symmetric), store)
    return store


def apply_gptq(model, cfg: GPTQConfig, calib):
    check_bits(cfg.bits, cfg.group_size)
    if calib is None:
        raise SlmkitError("GPTQ needs calibration data: token ids [n, length] (see slmkit.data.calibration_set)")
    store: dict[str, QuantizedWeight] = {}

    def on_layer(index, layer, run):
        targets = layer_targets(model, index, tuple(cfg.skip))
        with HessianCollector({t.name: t.module for t in targets}) as hc:
            run()
        for t in targets:
            qw = gptq(t.weight(), hc.H[t.name], cfg.bits, cfg.group_size, cfg.symmetric,
                      cfg.damp, cfg.block_size, cfg.act_order, cfg.static_groups)
            _store(t, qw, store)

    sequential(model, calib, on_layer, batch_size=cfg.batch_size, description="GPTQ")
    return store


QUANTIZERS = Registry("quantization method")
QUANTIZERS.add("rtn", RTNConfig, apply_rtn, "round to nearest, no calibration")
QUANTIZERS.add("gptq", GPTQConfig, apply_gptq, "GPTQ: Hessian-based error compensation")


def quantize(model, cfg, calib=None):
    """Quantize `model` in place with the method `cfg` configures; returns the model."""
    if getattr(model, "_slmkit_quantized", None):
        raise SlmkitError("this model is already quantized; start from the original weights")
    entry = QUANTIZERS.for_config(cfg)
    model._slmkit_quantized = entry.fn(model, cfg, calib)
    model._slmkit_steps = [*getattr(model, "_slmkit_steps", []), {"quantize": entry.name, "config": vars(cfg)}]
    return model
