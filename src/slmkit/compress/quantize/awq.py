"""AWQ, activation-aware weight quantization (Lin et al., 2023).

A few input channels carry much larger activations than the rest, and the weights that multiply
them matter most. AWQ multiplies those weight columns by s > 1 before quantizing (and divides the
activation by s in the op that produces it, `slmkit.compress.smooth`), so their relative rounding
error shrinks. Per decoder layer, at each input site (q/k/v, o, gate/up, down) whose producing op
can absorb a scale (`slmkit.compress.smooth.scale_groups`):

1. scale search: s = mean|x|^r (normalised so sqrt(max(s) * min(s)) = 1) for r on a grid in
   [0, 1); the r whose quantized linears score best wins. r = 0 is plain RTN, so the search never
   does worse than RTN by its own measure. Under grouped-query attention o's input channels read
   by the same kv head share one scale, so it can be folded into v.
   The score (`scale_objective`):
   - "loss" (default): the predicted change of the model's loss, first order <dW, dL/dW> plus the
     Fisher-weighted output error / 2 (`loss_change`), from the float model's weight gradients on
     `gradient_rows` calibration sequences (`slmkit.compress.sensitivity`). The first-order term
     is the one an output error cannot see: a rounding can raise or lower the loss on a text.
   - "linear": the linears' output MSE over every calibration token (AWQ's own objective).
2. fold s into the previous op (exact in float);
3. RTN on every linear of the layer.

Output errors come from each site's Gram matrix X^T X / n (collected once per layer), not from
re-running the linears on sampled tokens: exact over every calibration token, and a grid point
costs out x in^2 whatever the number of tokens. The math (`fake_quantize`, `search_scale`,
`loss_change`) is pure tensor code; `apply_awq` is the lifecycle on top of
`slmkit.compress.calibrate.sequential`. Each site's choice is recorded (`site_record`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from slmkit.compress.calibrate import CalibDtype, calib_dtype_field, sequential
from slmkit.compress.quantize.config import RTNConfig, grid_for
from slmkit.compress.sensitivity import loss_sensitivity
from slmkit.compress.smooth import absorber_scales, fold_scales, group_stats, scale_groups, tie_channels
from slmkit.compress.targets import Target, all_targets, layer_targets
from slmkit.errors import SlmkitError
from slmkit.runtime.qweight import QuantizedWeight, check_bits, grid, quantize_column, rtn

if TYPE_CHECKING:
    from torch import nn

    from slmkit.compress.smooth import ScaleGroup, SiteStats


@dataclass
class AWQConfig(RTNConfig):
    """AWQ: RTN's grid plus a per-site activation-aware scale search (see the module docstring)."""

    n_grid: int = field(default=20, metadata={
        "help": "points of the scale-exponent grid r = 0, 1/n, ..., (n-1)/n (s = mean|x|^r)"})
    scale_objective: Literal["loss", "linear"] = field(default="loss", metadata={
        "help": "what the scale search minimises: loss = the predicted change of the model's loss, "
                "<dW, dL/dW> + the Fisher-weighted output MSE / 2, from the float model's gradients "
                "on `gradient_rows` calibration sequences (one forward and backward pass each); "
                "linear = the linears' output MSE over every calibration token. Pick linear when "
                "loss's float32 gradient, the size of the quantized weights (about 5 GB at 1.5B "
                "parameters, on top of the float32 model), does not fit in memory"})
    gradient_rows: int = field(default=64, metadata={
        "help": "calibration sequences the loss objective's gradients and Fisher weights come from "
                "(scale_objective=loss)"})
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
    calib_dtype: CalibDtype = calib_dtype_field()

    def check(self) -> None:
        check_bits(self.bits, self.group_size)
        if self.scale_objective not in ("loss", "linear"):
            raise SlmkitError(f"AWQ scale_objective must be 'loss' or 'linear', not {self.scale_objective!r}")
        for name in ("n_grid", "batch_size", "gradient_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SlmkitError(f"AWQ {name} must be an integer >= 1, not {value!r}")


# ---- math ------------------------------------------------------------------------------------

def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool) -> torch.Tensor:
    """The dequantized grid values of w [out, in] (what `rtn(w).dequantize()` gives), vectorised
    over groups for the search loop; the last group is zero-padded (zeros never change a grid:
    asymmetric grids span min(w, 0)..max(w, 0), symmetric ones max|w|)."""
    g = group_size or w.shape[1]
    n_groups = math.ceil(w.shape[1] / g)
    flat = F.pad(w, (0, n_groups * g - w.shape[1])).reshape(-1, g)  # [out * G, g]
    scale, zero = grid(flat, bits, symmetric)                      # [out * G] each
    q = quantize_column(flat, scale[:, None], zero[:, None], bits)
    deq = (q - zero[:, None]) * scale[:, None]
    return deq.reshape(w.shape[0], -1)[:, :w.shape[1]]


def awq_scales(x_mean: torch.Tensor, ratio: float) -> torch.Tensor:
    """s [in] = mean|x|^ratio, floored at 1e-4 and normalised so sqrt(max(s) * min(s)) = 1."""
    s = x_mean.float().pow(ratio).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def row_output_errors(dw: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Per output row, the mean over tokens of (x dw_row^T)^2 for a weight error dw [out, in],
    from the inputs' Gram matrix X^T X / n [in, in]: diag(dw gram dw^T) [out]."""
    return ((dw @ gram) * dw).sum(-1)


def output_mse(dw: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Mean over tokens and outputs of (x dw^T)^2: tr(dw gram dw^T) / out (a 0-dim tensor)."""
    return row_output_errors(dw, gram).mean()


def loss_change(w: torch.Tensor, gram: torch.Tensor, grad: torch.Tensor, fisher: torch.Tensor):
    """-> error(wq): the predicted change of the mean token loss when linears w [out, in] become
    wq, to second order: <wq - w, grad> + sum_c fisher_c * mean_t (x_t dw_c)^2 / 2, from the
    weights' loss gradient grad [out, in], the outputs' diagonal Fisher weights [out] and the
    inputs' Gram matrix X^T X / n [in, in] (`slmkit.compress.sensitivity`). Unlike an output
    error it can be negative: a rounding may lower the loss on the text the gradient came from."""
    w, gram, grad, fisher = w.float(), gram.float(), grad.float(), fisher.float()

    def error(wq: torch.Tensor) -> float:
        return float(row_loss_changes(wq - w, gram, grad, fisher).sum())
    return error


def row_loss_changes(dw: torch.Tensor, gram: torch.Tensor, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    """`loss_change`'s prediction split by output row [out] (both of its terms are sums over rows)."""
    return (dw * grad).sum(-1) + 0.5 * row_output_errors(dw, gram) * fisher


def rescale_sensitivity(group: "ScaleGroup", s: torch.Tensor, grads: dict, fisher: dict) -> None:
    """After `fold_scales(group, s)`: the loss gradients and Fisher weights of the linears it changed,
    in their new units (columns times s: gradient / s; an absorbing linear's rows over s: gradient
    and output times s, Fisher times s^2), so predicted loss changes stay exact to the same order."""
    for t in group.linears:
        if t.name in grads:
            grads[t.name] = grads[t.name] / s[None, :]
    prev = group.prev
    if prev.target is None or prev.target.name not in grads:
        return
    per_row = absorber_scales(prev, s)
    rows = prev.rows or slice(None)
    grads[prev.target.name][rows] *= per_row[:, None]
    fisher[prev.target.name] = fisher[prev.target.name].clone()
    fisher[prev.target.name][rows] *= per_row ** 2


@torch.no_grad()
def search_scale(x_mean: torch.Tensor, gram: torch.Tensor | None, w: torch.Tensor, bits: int,
                 group_size: int | None, symmetric: bool, n_grid: int = 20, error=None,
                 tie: torch.Tensor | None = None) -> tuple[torch.Tensor, float, list[float]]:
    """Best AWQ scale for linears w [out, in] (rows of every linear reading x, concatenated)
    given the inputs' per-channel mean |x| [in]. The objective is the linears' output MSE from
    the inputs' Gram matrix X^T X / n [in, in], or `error(wq)` when given (e.g. `loss_change`):
    the error of the dequantized candidate weights wq [out, in] = fake_quantize(w s) / s.
    With `tie` (`Absorber.tie`, grouped-query attention's o input), mean |x| is averaged over
    tied channels first, so every candidate is equal across them and can be folded.
    Returns (s [in], the chosen ratio r, the error at each grid point r = i / n_grid)."""
    w = w.float()
    if error is None:
        gram = gram.float()

        def error(wq):
            return output_mse(wq - w, gram).item()
    x_mean = tie_channels(x_mean.float(), tie)
    errors: list[float] = []
    best = (math.inf, 0.0, torch.ones_like(x_mean))
    for i in range(n_grid):
        s = awq_scales(x_mean, i / n_grid)
        err = error(fake_quantize(w * s, bits, group_size, symmetric) / s)
        errors.append(err)
        if err < best[0]:
            best = (err, i / n_grid, s)
    return best[2], best[1], errors


# ---- lifecycle -------------------------------------------------------------------------------

def apply_awq(model: "nn.Module", cfg: AWQConfig, calib: torch.Tensor | None) -> dict[str, QuantizedWeight]:
    """Quantize every non-skipped decoder-layer linear of `model` in place with AWQ (weights left
    as their dequantized grid values, scales folded into the previous ops); returns the
    QuantizedWeight of each target by name. Each site's choice goes to
    `model._slmkit_quantize_report["sites"]` (`site_record`), which `quantize()` keeps in the
    step record."""
    cfg.check()
    if calib is None:
        raise SlmkitError("AWQ needs calibration data: token ids [n, length] (see slmkit.data.calibration_set)")
    store: dict[str, QuantizedWeight] = {}
    sites: list[dict] = []
    grads, fisher = {}, {}
    if cfg.scale_objective == "loss":
        sens = loss_sensitivity(model, calib[:cfg.gradient_rows], all_targets(model, tuple(cfg.skip)),
                                weight_grads=True)
        grads, fisher = sens.grads, sens.fisher

    def on_layer(index, layer, run):
        sites.extend(quantize_layer(model, index, run, cfg, store, grads, fisher))

    sequential(model, calib, on_layer, batch_size=cfg.batch_size, description="AWQ", dtype=cfg.calib_dtype)
    model._slmkit_quantize_report = {"sites": sites}
    return store


def quantize_layer(model: "nn.Module", index: int, run, cfg: AWQConfig, store: dict[str, QuantizedWeight],
                   grads: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor]) -> list[dict]:
    """One decoder layer: collect every site's input statistics in one pass (`run()`), search and
    fold each site's scale, then RTN on the layer's targets (into `store`). `grads` and `fisher`
    (the loss objective's, else empty) are rescaled by each fold and this layer's gradients are
    dropped at the end. Returns the layer's `site_record`s."""
    groups = scale_groups(model, index)
    quantized = {t.name for t in layer_targets(model, index, tuple(cfg.skip))}
    with group_stats(groups, gram=True) as st:
        run()
    records = []
    for g in groups:  # every scale first, so a linear absorbing one is quantized after it
        targets = [t for t in g.linears if t.name in quantized]
        if g.prev is None or not targets:
            continue
        s, r, errors = search_site(g, targets, st.stats[g.site], cfg, grads, fisher)
        records.append(site_record(index, g.site, cfg.scale_objective, r, errors))
        fold_scales(g, s)
        if grads:
            rescale_sensitivity(g, s, grads, fisher)
    for t in (t for g in groups for t in g.linears if t.name in quantized):
        qw = rtn(t.weight().float(), *grid_for(cfg, t))
        t.set_weight(qw.dequantize())
        store[t.name] = qw
    for name in quantized:
        grads.pop(name, None)
    return records


def search_site(group: "ScaleGroup", targets: list[Target], stats: "SiteStats", cfg: AWQConfig,
                grads: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor]):
    """`search_scale` at one site over its quantized linears `targets`, on the grid of the first
    one (per-module overrides rarely split a site), with the config's objective."""
    w = torch.cat([t.weight().float() for t in targets])           # [sum of out, in]
    gram, error = stats.gram, None                                 # gram [in, in]
    if cfg.scale_objective == "loss":
        error = loss_change(w, gram, torch.cat([grads[t.name] for t in targets]),
                            torch.cat([fisher[t.name] for t in targets]))
    return search_scale(stats.mean_abs, gram, w, *grid_for(cfg, targets[0]), cfg.n_grid,
                        error=error, tie=group.prev.tie)


def site_record(layer: int, site: str, objective: str, ratio: float, errors: list[float]) -> dict:
    """What the scale search chose at one site: the exponent r and, for the linear objective, its
    output error relative to plain RTN's (r = 0; below 1 = the scale helped on the calibration
    data); for the loss objective, the predicted loss changes of the choice and of RTN
    (`predicted_dl`, `predicted_dl_rtn`; signed, in nats per token)."""
    best = min(range(len(errors)), key=errors.__getitem__)
    record = {"layer": layer, "site": site, "objective": objective, "ratio": ratio}
    if objective == "loss":  # a signed loss change: a ratio to RTN's would mean nothing
        return record | {"predicted_dl": errors[best], "predicted_dl_rtn": errors[0]}
    return record | {"error_vs_rtn": errors[best] / errors[0] if errors[0] > 0 else 1.0}
