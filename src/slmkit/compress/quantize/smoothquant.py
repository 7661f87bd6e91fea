"""SmoothQuant (Xiao et al., 2022): W8A8 with activation outliers migrated into the weights.

Per-token int8 activations suffer when a few input channels are much larger than the rest.
SmoothQuant divides channel j of the activation by

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)        (W_j: column j of every linear reading X)

and multiplies the weights' column j by s_j (folded exactly, `slmkit.compress.smooth`), balancing
the quantization difficulty between activations (alpha -> 1 moves all of it into the weights).
As in the paper, only the norm-fed inputs are smoothed (attention input: q/k/v or qkv; MLP input:
gate/up, up or gate_up); the inputs of o and down are quantized unsmoothed. Weights then get int8
symmetric per-output-channel grids (`QuantizedWeight(bits=8, group_size=None, act_bits=8)`).
Activations are not simulated in the model: the W8A8 kernel quantizes them per token at run time;
`fake_quant_activations` simulates that for measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from slmkit.compress.calibrate import CalibDtype, calib_dtype_field, sequential
from slmkit.compress.smooth import (
    ATTN_IN,
    MLP_IN,
    fold_scales,
    group_stats,
    scale_groups,
)
from slmkit.compress.targets import layer_targets
from slmkit.errors import SlmkitError
from slmkit.runtime.qweight import QuantizedWeight, rtn

if TYPE_CHECKING:
    from torch import nn

WEIGHT_BITS = ACT_BITS = 8


@dataclass
class SmoothQuantConfig:
    """SmoothQuant W8A8: the migration strength `alpha` and the calibration passes."""

    alpha: float = field(default=0.5, metadata={
        "help": "migration strength in [0, 1]: 0 keeps activations as they are (only weights are "
                "equalised), 1 moves all of the activation range into the weights"})
    min_scale: float = field(default=1e-5, metadata={
        "help": "floor for the smoothing scales and for the max |x| / max |W| they are built from"})
    skip: list[str] = field(default_factory=list, metadata={
        "help": "roles (q, k, v, o, gate, up, down, ...) or name patterns to leave unquantized"})
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
    calib_dtype: CalibDtype = calib_dtype_field()

    def check(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise SlmkitError(f"SmoothQuant alpha must be in [0, 1] (paper default 0.5), not {self.alpha!r}")
        if not isinstance(self.min_scale, (int, float)) or not 0 < self.min_scale < 1:
            raise SlmkitError(f"SmoothQuant min_scale must be in (0, 1), not {self.min_scale!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SlmkitError(f"batch_size must be an integer >= 1, not {self.batch_size!r}")


# ---- math ------------------------------------------------------------------------------------

def smooth_scales(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float,
                  min_scale: float = 1e-5) -> torch.Tensor:
    """s [in] from per-channel max |x| [in] and the [out_i, in] weights reading x."""
    w_max = torch.cat([w.float() for w in weights]).abs().amax(0).clamp(min=min_scale)  # [in]
    s = act_max.float().clamp(min=min_scale).pow(alpha) / w_max.pow(1 - alpha)
    return s.clamp(min=min_scale)


def fake_quant_activations(x: torch.Tensor, bits: int = ACT_BITS) -> torch.Tensor:
    """x [..., channels] through a symmetric per-token (last dim) integer grid and back."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(-1, keepdim=True).float() / qmax         # [..., 1]
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.clamp(torch.round(x.float() / scale), -qmax, qmax) * scale).to(x.dtype)


def quantize_w8(w: torch.Tensor) -> QuantizedWeight:
    """int8 symmetric per-output-channel grid of w [out, in] (zero point 128, unsigned codes)."""
    qw = rtn(w, WEIGHT_BITS, None, symmetric=True)
    qw.act_bits = ACT_BITS
    return qw


# ---- lifecycle -------------------------------------------------------------------------------

def _run(model: "nn.Module", cfg: SmoothQuantConfig, calib: torch.Tensor | None, quantize: bool
         ) -> tuple[dict[str, torch.Tensor], dict[str, QuantizedWeight]]:
    cfg.check()
    if calib is None:
        raise SlmkitError("SmoothQuant needs calibration data: token ids [n, length] "
                          "(see slmkit.data.calibration_set)")
    scales: dict[str, torch.Tensor] = {}
    store: dict[str, QuantizedWeight] = {}

    def on_layer(index, layer, run):
        targets = layer_targets(model, index, tuple(cfg.skip))
        quantized = {t.name for t in targets}
        groups = [g for g in scale_groups(model, index) if g.site in (ATTN_IN, MLP_IN) and g.prev is not None]
        with group_stats(groups) as st:
            run()
        for g in groups:
            # only linears whose input will be quantized matter; skipped ones stay exact in float
            ws = [t.weight() for t in g.linears if t.name in quantized]
            if ws:
                s = smooth_scales(st.stats[g.site].max_abs, ws, cfg.alpha, cfg.min_scale)
                fold_scales(g, s)
                scales[f"{g.prev.name}->{g.site}"] = s
        if quantize:
            for t in targets:
                qw = quantize_w8(t.weight())
                t.set_weight(qw.dequantize())
                store[t.name] = qw

    sequential(model, calib, on_layer, batch_size=cfg.batch_size, dtype=cfg.calib_dtype,
               description="SmoothQuant" if quantize else "smoothing")
    return scales, store


def smooth(model: "nn.Module", cfg: SmoothQuantConfig, calib: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Smoothing alone (the float model's function is unchanged); returns the scales s [in] by
    "<absorbing norm>-><site>"."""
    return _run(model, cfg, calib, quantize=False)[0]


def apply_smoothquant(model: "nn.Module", cfg: SmoothQuantConfig,
                      calib: torch.Tensor | None) -> dict[str, QuantizedWeight]:
    """Smooth, then quantize every non-skipped decoder-layer linear to int8 per output channel in
    place (dequantized grid values); returns the QuantizedWeight (act_bits=8) of each target."""
    return _run(model, cfg, calib, quantize=True)[1]
