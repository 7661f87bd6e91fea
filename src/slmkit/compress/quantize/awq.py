"""AWQ, activation-aware weight quantization (Lin et al., 2023).

A few input channels carry much larger activations than the rest, and the weights that multiply
them matter most. AWQ multiplies those weight columns by s > 1 before quantizing (and divides the
activation by s in the op that produces it, `slmkit.compress.smooth`), so their relative rounding
error shrinks. Per input site of a decoder layer:

1. scale search: s = mean|x|^r (normalised by sqrt(max(s) * min(s))) for r on a grid in [0, 1);
   pick the r whose quantized linears score best (r = 0 is plain RTN, so the search never does
   worse than RTN by its own measure). The default, `scale_objective="loss"`, scores the
   predicted change of the model's loss (below); with "linear" the score is the linears' output
   MSE over all calibration tokens, the original AWQ objective.
   With `scale_objective="layer"` the error at the sites fed by a norm (q/k/v, gate/up) is
   instead the whole decoder layer's output MSE on a few calibration sequences, each candidate's
   quantized weights in place (AutoAWQ scores these sites by the attention or the MLP output;
   o and down, scored by their own output there too, keep the exact Gram objective); with
   "layer_all" o and down are scored by the layer's output too (o's error then passes through
   the MLP's norm and nonlinearity before it is counted);
   With `scale_objective="loss"` every site is scored by the predicted change of the model's
   loss, first order <dW, dL/dW> plus the Fisher-weighted output error / 2, from the float model's
   gradients on calibration text: on Qwen2.5-Coder-0.5B the first-order term, which no output
   error sees, is as large as the second-order one and decides whether a scale helps a text
   (this objective beats RTN on both texts there; every output-error objective lost);
   With `duo_scaling`, candidates s = mean|x|^r / mean|w_hat|^(1-r) are tried too (w_hat: the
   weights divided by their group's max |w|, averaged over output rows), as AutoAWQ and
   llm-compressor do;
2. fold s into the previous op (exact in float);
3. with `clip` (off by default: on Qwen2.5-Coder-0.5B every guarded clip cost perplexity on
   both texts), clip search, per linear (not q/k/qkv): shrink each (row, group)'s range by a factor
   1 - i/clip_grid > 1 - max_shrink to minimise that group's output error, then guards:
   a. per row, the clip is kept only where it lowers the row's *full* output error (the per-group
      search ignores the cross-group terms, and on Qwen2.5 about a fifth of the rows come out
      worse than unclipped);
   b. in a gated MLP, act(gate(x)) * up(x), per intermediate channel the clip of gate's and up's
      row is kept only where it lowers the channel's error over the calibration tokens (one extra
      pass of the layer). A few channels carry huge products (the massive activations), and a clip
      that lowers each linear's mean error can still raise theirs: on Qwen2.5-Coder-0.5B layer 3,
      clipping lowered gate/up's errors by 12% and raised the MLP output error 2.7x; unguarded, the
      clip cost more perplexity than plain RTN (measured in benchmarks/RESULTS.md);
   c. per linear, in forward order from plain grids, the clip is kept only where it lowers the
      whole decoder layer's output error on `probe_rows` calibration sequences (`layer_guard`):
      on Qwen2.5-Coder-0.5B clips that pass a and b still cost perplexity in domain as well as out;
   with the loss objective, before c, each row's clip is kept only where it lowers the row's
   predicted loss change (first order included; `guard_clip_by_loss`);
4. RTN on the clipped weight.

Output errors come from each site's Gram matrix X^T X / n (collected once per layer), not from
re-running the linears on sampled tokens: exact over every calibration token, and the cost of a
grid point is out x in^2 (scale) or out x in x group_size (clip), whatever the number of tokens.
The math (`fake_quantize`, `search_scale`, `search_clip`, `clip_weight`) is pure tensor code;
`apply_awq` is the lifecycle on top of `slmkit.compress.calibrate.sequential`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from slmkit.compress.calibrate import CalibDtype, InputHooks, calib_dtype_field, sequential
from slmkit.compress.quantize.config import RTNConfig, grid_for
from slmkit.compress.sensitivity import loss_sensitivity, output_fisher
from slmkit.compress.smooth import absorber_scales, fold_scales, group_stats, scale_groups, tie_channels
from slmkit.compress.targets import Target, all_targets, layer_targets
from slmkit.errors import SlmkitError
from slmkit.models.arch import get_arch
from slmkit.runtime.qweight import QuantizedWeight, check_bits, grid, quantize_column, rtn

if TYPE_CHECKING:
    from torch import nn

SITES = ("attn_in", "attn_out", "mlp_in", "mlp_out")  # `slmkit.compress.smooth.scale_groups`' sites
# q/k feed a softmax, where a linear output-error loss misjudges clipping (as in AutoAWQ)
NO_CLIP_ROLES = ("q", "k", "qkv")


@dataclass
class AWQConfig(RTNConfig):
    """AWQ: RTN's grid plus the scale search (objective, sites, grid) and the optional guarded clipping
    (see the module docstring)."""

    n_grid: int = field(default=20, metadata={
        "help": "points of the scale-exponent grid r = 0, 1/n, ..., (n-1)/n (s = mean|x|^r)"})
    clip: bool = field(default=False, metadata={
        "help": "search a per-group clipping range after scaling (not for q/k/qkv); off by default: "
                "on Qwen2.5-Coder-0.5B every guarded clip cost perplexity on both texts"})
    clip_grid: int = field(default=20, metadata={"help": "clip factors 1 - i/clip_grid are tried"})
    max_shrink: float = field(default=0.5, metadata={
        "help": "largest fraction of a group's range clipping may cut, in [0, 1)"})
    clip_floor: float = field(default=0.0, metadata={
        "help": "the clip search measures output errors on the Gram matrix plus clip_floor * "
                "mean(diag) on its diagonal: above 0, weights of inputs the calibration text leaves "
                "quiet are not clipped for free"})
    scale_floor: float = field(default=0.0, metadata={
        "help": "the linear scale objective measures output errors on the Gram matrix plus "
                "scale_floor * mean(diag) on its diagonal: above 0, a scale that coarsens the "
                "weights of inputs the calibration text leaves quiet is no longer free (GPTQ's "
                "clip_floor, for the scale search; not used by the layer objective)"})
    clip_guard: bool = field(default=True, metadata={
        "help": "keep a clip only where it lowers the row's full output error and, in gated MLPs, "
                "the intermediate channel's error (one extra pass per layer)"})
    layer_guard: bool = field(default=True, metadata={
        "help": "then keep each linear's clip (gate's and up's together) only where it lowers the "
                "decoder layer's output error on `probe_rows` calibration sequences, tried in "
                "forward order from plain grids (float32; one layer pass per clipped linear)"})
    scale_objective: Literal["linear", "layer", "layer_all", "loss"] = field(default="loss", metadata={
        "help": "what the scale search minimises: linear = the site's linears' output MSE over every "
                "calibration token (from the Gram matrix); layer = at the sites fed by a norm (q/k/v, "
                "gate/up), the decoder layer's output MSE on `probe_rows` calibration sequences "
                "(float32, one layer pass per grid point); o and down keep their own output MSE; "
                "layer_all = the layer's output MSE at every site, o and down too; loss = the "
                "predicted change of the model's loss, <dW, dL/dW> + the Fisher-weighted output MSE "
                "/ 2, from the float model's gradients on `gradient_rows` calibration sequences (one "
                "forward and backward pass each; r = 0, plain RTN, wins unless a scale is predicted "
                "to lower it)"})
    probe_rows: int = field(default=4, metadata={
        "help": "calibration sequences the layer objective and the layer guard run per trial"})
    duo_scaling: bool = field(default=False, metadata={
        "help": "also try scales mean|x|^r / mean|w_hat|^(1-r) (w_hat: weights over their group's "
                "max |w|), as AutoAWQ; the search keeps whichever candidate has the lowest error"})
    output_weights: Literal["uniform", "fisher"] = field(default="uniform", metadata={
        "help": "how the linear scale objective weighs the output channels: uniform = plain output "
                "MSE; fisher = each channel's squared error times its diagonal Fisher weight "
                "E[(dL/dy)^2] from `fisher_rows` calibration sequences (one forward and backward "
                "pass of the float model each, `slmkit.compress.sensitivity`)"})
    fisher_rows: int = field(default=8, metadata={
        "help": "calibration sequences the Fisher weights are estimated on (output_weights=fisher)"})
    gradient_rows: int = field(default=64, metadata={
        "help": "calibration sequences the loss objective's gradients and Fisher weights come from "
                "(scale_objective=loss): the first-order term's sign changes between draws of 16; "
                "rows the model wrote itself add noise to it (their expected gradient is zero)"})
    sites: list[str] = field(default_factory=lambda: list(SITES), metadata={
        "help": "input sites whose scales are searched: attn_in (q/k/v), attn_out (o), mlp_in "
                "(gate/up), mlp_out (down); the others keep s = 1 (plain RTN grids, still clipped)"})
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
    calib_dtype: CalibDtype = calib_dtype_field()

    def check(self) -> None:
        check_bits(self.bits, self.group_size)
        if not isinstance(self.duo_scaling, bool):
            raise SlmkitError(f"AWQ duo_scaling must be true or false, not {self.duo_scaling!r}")
        if not isinstance(self.sites, (list, tuple)) or any(x not in SITES for x in self.sites):
            raise SlmkitError(f"AWQ sites must be a list from {list(SITES)}, not {self.sites!r}")
        if self.output_weights not in ("uniform", "fisher"):
            raise SlmkitError(f"AWQ output_weights must be 'uniform' or 'fisher', not {self.output_weights!r}")
        if self.output_weights == "fisher" and self.scale_objective != "linear":
            raise SlmkitError("AWQ output_weights='fisher' weighs the linear objective's rows; set "
                              f"scale_objective='linear' (it is {self.scale_objective!r}; the loss "
                              "objective has Fisher weights of its own)")
        if self.scale_objective not in ("linear", "layer", "layer_all", "loss"):
            raise SlmkitError("AWQ scale_objective must be 'linear', 'layer', 'layer_all' or 'loss', "
                              f"not {self.scale_objective!r}")
        for name in ("n_grid", "clip_grid", "batch_size", "probe_rows", "fisher_rows", "gradient_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SlmkitError(f"AWQ {name} must be an integer >= 1, not {value!r}")
        for name in ("clip_floor", "scale_floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
                raise SlmkitError(f"AWQ {name} must be a number >= 0, not {value!r}")
        if not 0 <= self.max_shrink < 1:
            raise SlmkitError(f"AWQ max_shrink must be in [0, 1) (0 = no clipping), not {self.max_shrink!r}")


# ---- math ------------------------------------------------------------------------------------

def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """w [rows, in] -> [rows, n_groups, g], zero-padding the last group (zeros never change a
    grid: asymmetric grids span min(w, 0)..max(w, 0), symmetric ones max|w|)."""
    g = group_size or w.shape[1]
    n_groups = math.ceil(w.shape[1] / g)
    return F.pad(w, (0, n_groups * g - w.shape[1])).reshape(w.shape[0], n_groups, g)


def clip_weight(w: torch.Tensor, shrink: torch.Tensor | None, group_size: int | None) -> torch.Tensor:
    """Clamp each (row, group) of w [out, in] to shrink * [min(w, 0), max(w, 0)];
    shrink [out, n_groups] in (0, 1] (None = no clipping)."""
    if shrink is None:
        return w
    wg = _grouped(w, group_size)                                   # [out, G, g]
    lo = wg.amin(-1, keepdim=True).clamp(max=0) * shrink[..., None]
    hi = wg.amax(-1, keepdim=True).clamp(min=0) * shrink[..., None]
    return torch.maximum(torch.minimum(wg, hi), lo).reshape(w.shape[0], -1)[:, :w.shape[1]]


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                  shrink: torch.Tensor | None = None) -> torch.Tensor:
    """The dequantized grid values of w [out, in] (what `rtn(clip_weight(w, shrink)).dequantize()`
    gives), vectorised over groups for the search loops."""
    wg = _grouped(clip_weight(w, shrink, group_size), group_size)  # [out, G, g]
    flat = wg.reshape(-1, wg.shape[-1])                            # [out * G, g]
    scale, zero = grid(flat, bits, symmetric)                      # [out * G] each
    q = quantize_column(flat, scale[:, None], zero[:, None], bits)
    deq = (q - zero[:, None]) * scale[:, None]
    return deq.reshape(w.shape[0], -1)[:, :w.shape[1]]


def awq_scales(x_mean: torch.Tensor, ratio: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """s [in] = mean|x|^ratio (or, given w_mean, mean|x|^ratio / (w_mean^(1-ratio) + 1e-4)),
    floored at 1e-4 and normalised so sqrt(max(s) * min(s)) = 1."""
    s = x_mean.float().pow(ratio)
    if w_mean is not None:
        s = s / (w_mean.float().pow(1 - ratio) + 1e-4)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def weight_mean(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """Per input channel [in], the mean over output rows of |w| / max |w| of its (row, group)."""
    wg = _grouped(w.float().abs(), group_size)                     # [out, G, g]
    normed = wg / (wg.amax(-1, keepdim=True) + 1e-6)
    return normed.reshape(w.shape[0], -1)[:, :w.shape[1]].mean(0)


def floored(gram: torch.Tensor, floor: float) -> torch.Tensor:
    """gram [in, in] + floor * mean(diag gram) * I: every input counts at least `floor` times an
    average one (gram itself when floor is 0)."""
    if not floor:
        return gram
    return gram + floor * torch.diagonal(gram).mean() * torch.eye(gram.shape[0], dtype=gram.dtype)


def row_output_errors(dw: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Per output row, the mean over tokens of (x dw_row^T)^2 for a weight error dw [out, in],
    from the inputs' Gram matrix X^T X / n [in, in]: diag(dw gram dw^T) [out]."""
    return ((dw @ gram) * dw).sum(-1)


def output_mse(dw: torch.Tensor, gram: torch.Tensor, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens and outputs of (x dw^T)^2: tr(dw gram dw^T) / out (a 0-dim tensor); with
    `row_weights` [out] (e.g. Fisher weights), each output row's error is multiplied by its weight."""
    rows = row_output_errors(dw, gram)
    return (rows if row_weights is None else rows * row_weights).mean()


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


def rescale_sensitivity(group, s: torch.Tensor, grads: dict, fisher: dict) -> None:
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
def guard_clip_by_loss(w: torch.Tensor, shrink: torch.Tensor, gram: torch.Tensor, grad: torch.Tensor,
                       fisher: torch.Tensor, bits: int, group_size: int | None, symmetric: bool) -> int:
    """Undo the clip of each row of w [out, in] (shrink [out, n_groups], in place) whose predicted
    loss change (`row_loss_changes`) it does not lower; returns the number of rows unclipped."""
    w = w.float()
    clipped = row_loss_changes(fake_quantize(w, bits, group_size, symmetric, shrink) - w, gram, grad, fisher)
    plain = row_loss_changes(fake_quantize(w, bits, group_size, symmetric) - w, gram, grad, fisher)
    worse = clipped >= plain
    shrink[worse] = 1.0
    return int(worse.sum())


def scale_candidates(x_mean: torch.Tensor, w: torch.Tensor, group_size: int | None, n_grid: int = 20,
                     duo_scaling: bool = False, tie: torch.Tensor | None = None):
    """The AWQ scale grid for linears w [out, in] reading inputs with per-channel mean |x| [in]:
    yields (r, s) for r = i / n_grid, then, with `duo_scaling`, the weight-aware candidates.
    With `tie` (`Absorber.tie`, grouped-query attention's o input), the statistics are averaged
    over tied channels first, so every candidate is equal across them and can be folded."""
    x_mean = tie_channels(x_mean.float(), tie)
    for w_mean in [None] + ([tie_channels(weight_mean(w, group_size), tie)] if duo_scaling else []):
        for i in range(n_grid):
            yield i / n_grid, awq_scales(x_mean, i / n_grid, w_mean)


@torch.no_grad()
def search_scale(x_mean: torch.Tensor, gram: torch.Tensor | None, w: torch.Tensor, bits: int,
                 group_size: int | None, symmetric: bool, n_grid: int = 20, duo_scaling: bool = False,
                 error=None, tie: torch.Tensor | None = None,
                 row_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, float, list[float]]:
    """Best AWQ scale for linears w [out, in] (rows of every linear reading x, concatenated)
    given the inputs' per-channel mean |x| [in]. The objective is the linears' output MSE from
    the inputs' Gram matrix X^T X / n [in, in], or `error(wq)` when given: the error of the
    dequantized candidate weights wq [out, in] (fake_quantize(w s) / s; e.g. a decoder layer's
    output error with them in place, `search_scale_layer`).
    `tie`: see `scale_candidates`. `row_weights` [out]: weigh each output row's error (`output_mse`).
    Returns (s [in], the chosen ratio r, the error at each grid point r = i / n_grid; with
    `duo_scaling`, the n_grid duo candidates' errors follow the plain ones)."""
    w = w.float()
    if error is None:
        gram = gram.float()
        def error(wq):
            return output_mse(wq - w, gram, row_weights).item()
    errors: list[float] = []
    best = (math.inf, 0.0, torch.ones_like(x_mean, dtype=torch.float32))
    for r, s in scale_candidates(x_mean, w, group_size, n_grid, duo_scaling, tie):
        err = error(fake_quantize(w * s, bits, group_size, symmetric) / s)
        errors.append(err)
        if err < best[0]:
            best = (err, r, s)
    return best[2], best[1], errors


@torch.no_grad()
def search_scale_layer(targets: list[Target], x_mean: torch.Tensor, score, bits: int,
                       group_size: int | None, symmetric: bool, n_grid: int = 20,
                       duo_scaling: bool = False,
                       tie: torch.Tensor | None = None) -> tuple[torch.Tensor, float, list[float]]:
    """`search_scale` scored by the whole decoder layer (AutoAWQ scores a site by the output of
    the block it feeds): each candidate's dequantized weights go into the site's linears and
    `score()` (a `LayerPass.probe`) runs the layer. Changing a linear's error by the same MSE
    matters more where the following ops amplify it (a gated MLP's few huge channels, attention's
    softmax), which a single linear's output error does not see. The weights are restored.
    `tie`: see `scale_candidates` (o's input under grouped-query attention)."""
    originals = [t.weight().clone() for t in targets]
    sizes = [o.shape[0] for o in originals]

    def error(wq: torch.Tensor) -> float:
        for t, part in zip(targets, wq.split(sizes)):
            t.set_weight(part)
        return score()
    try:
        return search_scale(x_mean, None, torch.cat(originals), bits, group_size, symmetric, n_grid,
                            duo_scaling, error, tie)
    finally:
        for t, o in zip(targets, originals):
            t.set_weight(o)


def _diagonal_blocks(gram: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """gram [in, in] -> its [G, g, g] diagonal blocks, one per column group (zero-padded)."""
    g = group_size or gram.shape[0]
    n_groups = math.ceil(gram.shape[0] / g)
    pad = n_groups * g - gram.shape[0]
    padded = F.pad(gram, (0, pad, 0, pad))
    return torch.stack([padded[j * g:(j + 1) * g, j * g:(j + 1) * g] for j in range(n_groups)])


@torch.no_grad()
def search_clip(w: torch.Tensor, gram: torch.Tensor, bits: int, group_size: int | None,
                symmetric: bool, n_grid: int = 20, max_shrink: float = 0.5,
                guard: bool = True, floor: float = 0.0) -> torch.Tensor:
    """Per (row, group) shrink factor [out, n_groups] of w [out, in] among 1 - i/n_grid
    (i < max_shrink * n_grid) minimising that group's own output error, mean (x_g dw_g)^2, on
    inputs with Gram matrix gram [in, in] (plus floor * mean(diag gram) on its diagonal). With
    `guard`, rows whose full output error (cross-group terms included) the clip does not lower
    are left unclipped (shrink 1)."""
    w = w.float()
    gram = gram.float()
    gram = floored(gram, floor)
    blocks = _diagonal_blocks(gram, group_size)                    # [G, g, g]
    wg = _grouped(w, group_size)                                   # [out, G, g]
    factors = [1 - i / n_grid for i in range(max(1, int(max_shrink * n_grid)))]
    best_shrink = torch.ones(wg.shape[:2])
    best_err = torch.full(wg.shape[:2], math.inf)
    for f in factors:
        shrink = torch.full(wg.shape[:2], f)
        dw = _grouped(fake_quantize(w, bits, group_size, symmetric, shrink), group_size) - wg
        err = (torch.einsum("ogk,gkl->ogl", dw, blocks) * dw).sum(-1)  # [out, G]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_shrink[better] = f
    if guard:
        clipped = fake_quantize(w, bits, group_size, symmetric, best_shrink) - w
        plain = fake_quantize(w, bits, group_size, symmetric) - w
        worse = row_output_errors(clipped, gram) >= row_output_errors(plain, gram)  # [out]
        best_shrink[worse] = 1.0
    return best_shrink


class GatedErrors(InputHooks):
    """`with GatedErrors(gate_module, act, ref, candidates) as ge: run()` sums, per intermediate
    channel, the squared error of act(x g^T) * (x u^T) against the reference pair ref = (g, u) for
    each candidate pair of [inner, in] weights, over every token the gate projection sees."""

    def __init__(self, gate: "nn.Module", act, ref: tuple[torch.Tensor, torch.Tensor],
                 candidates: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__({"gate": gate})
        self.act, self.ref, self.candidates = act, ref, candidates
        self.sq = [torch.zeros(ref[0].shape[0]) for _ in candidates]

    def observe(self, name: str, x: torch.Tensor) -> None:
        h_ref = self.act(x @ self.ref[0].T) * (x @ self.ref[1].T)
        for sq, (g, u) in zip(self.sq, self.candidates):
            sq += ((self.act(x @ g.T) * (x @ u.T) - h_ref) ** 2).sum(0)


@torch.no_grad()
def guard_gated_clip(act, gate: Target, up: Target, shrinks: dict[str, torch.Tensor],
                     cfg: "AWQConfig", run) -> int:
    """Undo the clip of gate's and up's row c wherever it does not lower intermediate channel c's
    error on the calibration tokens, with the MLP's activation `act` (one more pass of the layer
    through `run`). Returns the number of channels left unclipped; 0 and no pass when `act` is
    None (unknown) or either projection was not clipped."""
    if act is None or gate.name not in shrinks or up.name not in shrinks:
        return 0
    ref = (gate.weight().float(), up.weight().float())
    def deq(t, shrink):
        return fake_quantize(t.weight().float(), *grid_for(cfg, t), shrink)
    plain = (deq(gate, None), deq(up, None))
    clipped = (deq(gate, shrinks[gate.name]), deq(up, shrinks[up.name]))
    with GatedErrors(gate.module, act, ref, [plain, clipped]) as ge:
        run()
    worse = ge.sq[1] >= ge.sq[0]                                    # [inner]
    for t in (gate, up):
        shrinks[t.name][worse] = 1.0
    return int(worse.sum())


@torch.no_grad()
def guard_clip_by_layer(targets: list[Target], shrinks: dict[str, torch.Tensor], cfg: "AWQConfig",
                        score) -> list[str]:
    """Keep each clip only where it lowers the whole decoder layer's output error `score()` (a
    `LayerPass.probe` made on the float layer): every target starts on its plain grid, then the
    clipped linears are tried one at a time in forward order (gate and up together), each kept if
    the error drops. A linear's output MSE misses what follows it (attention's softmax, a gated
    MLP's huge channels, the residual's massive activations); the layer does not. Drops the
    rejected entries of `shrinks`, returns their names; the weights are restored."""
    by_name = {t.name: t for t in targets}
    originals = {t.name: t.weight().clone() for t in targets}

    def place(name: str, shrink: torch.Tensor | None) -> None:
        t = by_name[name]
        t.set_weight(fake_quantize(originals[name].float(), *grid_for(cfg, t), shrink))

    units: list[list[str]] = []
    for t in targets:
        if t.name not in shrinks:
            continue
        if t.role == "up" and units and by_name[units[-1][0]].role == "gate":
            units[-1].append(t.name)
        else:
            units.append([t.name])
    dropped: list[str] = []
    try:
        for t in targets:
            place(t.name, None)
        best = score()
        for unit in units:
            for name in unit:
                place(name, shrinks[name])
            err = score()
            if err < best:
                best = err
                continue
            for name in unit:
                place(name, None)
            dropped += unit
    finally:
        for t in targets:
            t.set_weight(originals[t.name])
    for name in dropped:
        del shrinks[name]
    return dropped


# ---- lifecycle -------------------------------------------------------------------------------

def apply_awq(model: "nn.Module", cfg: AWQConfig, calib: torch.Tensor | None) -> dict[str, QuantizedWeight]:
    """Quantize every non-skipped decoder-layer linear of `model` in place with AWQ (weights left
    as their dequantized grid values, scales folded into the previous ops); returns the
    QuantizedWeight of each target by name."""
    cfg.check()
    if calib is None:
        raise SlmkitError("AWQ needs calibration data: token ids [n, length] (see slmkit.data.calibration_set)")
    store: dict[str, QuantizedWeight] = {}
    sites: list[dict] = []                    # what the scale search chose where (`site_record`)
    fisher, grads = {}, {}
    if cfg.scale_objective == "loss":
        sens = loss_sensitivity(model, calib[:cfg.gradient_rows], all_targets(model, tuple(cfg.skip)),
                                weight_grads=True)
        fisher, grads = sens.fisher, sens.grads
    elif cfg.output_weights == "fisher":
        fisher = output_fisher(model, calib[:cfg.fisher_rows], all_targets(model, tuple(cfg.skip)))

    def on_layer(index, layer, run):
        groups = scale_groups(model, index)
        quantized = {t.name for t in layer_targets(model, index, tuple(cfg.skip))}
        with group_stats(groups, gram=True) as st:
            run()
        grams = {}
        score = run.probe(cfg.probe_rows) if cfg.scale_objective in ("layer", "layer_all") else None
        for g in groups:  # 1-2: every scale first, so a linear absorbing one is quantized after it
            stats, targets = st.stats[g.site], [t for t in g.linears if t.name in quantized]
            grams[g.site] = stats.gram                             # [in, in]
            if g.prev is None or not targets or g.site not in cfg.sites:
                continue
            w = torch.cat([t.weight().float() for t in targets])   # [sum of out, in]
            # the search uses the first target's grid (per-module overrides rarely split a site)
            # o and down (absorbed by a linear) keep their own output's error unless layer_all
            if cfg.scale_objective == "loss":
                error = loss_change(w, grams[g.site], torch.cat([grads[t.name] for t in targets]),
                                    torch.cat([fisher[t.name] for t in targets]))
                s, r, errors = search_scale(stats.mean_abs, None, w, *grid_for(cfg, targets[0]), cfg.n_grid,
                                            cfg.duo_scaling, error, g.prev.tie)
                objective = "loss"
            elif score is None or (g.prev.target is not None and cfg.scale_objective == "layer"):
                row_weights = torch.cat([fisher[t.name] for t in targets]) if fisher else None
                s, r, errors = search_scale(stats.mean_abs, floored(grams[g.site], cfg.scale_floor), w,
                                            *grid_for(cfg, targets[0]), cfg.n_grid, cfg.duo_scaling,
                                            tie=g.prev.tie, row_weights=row_weights)
                objective = "linear"
            else:
                s, r, errors = search_scale_layer(targets, stats.mean_abs, score, *grid_for(cfg, targets[0]),
                                                  cfg.n_grid, cfg.duo_scaling, g.prev.tie)
                objective = "layer"
            sites.append(site_record(index, g.site, objective, r, errors, cfg.n_grid))
            fold_scales(g, s)
            grams[g.site] = grams[g.site] / (s[:, None] * s[None, :])  # inputs are now x / s
            if grads:
                rescale_sensitivity(g, s, grads, fisher)
        shrinks: dict[str, torch.Tensor] = {}                       # 3: clip search
        site_targets = [(g, t) for g in groups for t in g.linears if t.name in quantized]
        if cfg.clip and cfg.max_shrink > 0:
            for g, t in site_targets:
                if t.role not in NO_CLIP_ROLES:
                    bits, group_size, symmetric = grid_for(cfg, t)
                    shrinks[t.name] = search_clip(t.weight().float(), grams[g.site], bits, group_size,
                                                  symmetric, cfg.clip_grid, cfg.max_shrink, cfg.clip_guard,
                                                  cfg.clip_floor)
            roles = {t.role: t for _, t in site_targets}
            if cfg.clip_guard and "gate" in roles and "up" in roles:
                guard_gated_clip(get_arch(model).gated_mlp_act(layer), roles["gate"], roles["up"],
                                 shrinks, cfg, run)
            if grads:  # the loss objective: keep a row's clip only where it lowers the predicted loss
                for g, t in site_targets:
                    if t.name in shrinks:
                        guard_clip_by_loss(t.weight(), shrinks[t.name], grams[g.site], grads[t.name],
                                           fisher[t.name], *grid_for(cfg, t))
            if cfg.layer_guard and shrinks:
                guard_clip_by_layer([t for _, t in site_targets], shrinks, cfg, run.probe(cfg.probe_rows))
        for g, t in site_targets:                                   # 4
            bits, group_size, symmetric = grid_for(cfg, t)
            qw = rtn(clip_weight(t.weight().float(), shrinks.get(t.name), group_size), bits, group_size, symmetric)
            t.set_weight(qw.dequantize())
            store[t.name] = qw
        for name in quantized:                                      # this layer's gradients are done
            grads.pop(name, None)

    sequential(model, calib, on_layer, batch_size=cfg.batch_size, description="AWQ", dtype=cfg.calib_dtype)
    model._slmkit_quantize_report = {"sites": sites}
    return store


def site_record(layer: int, site: str, objective: str, ratio: float, errors: list[float],
                n_grid: int) -> dict:
    """What the scale search chose at one site: the exponent r, whether the weight-aware (duo)
    candidate won, and the objective's error there relative to plain RTN's (r = 0; below 1 = the
    scale helped on the calibration data); for the loss objective, the predicted loss changes of
    the choice and of RTN (`predicted_dl`, `predicted_dl_rtn`; signed, in nats per token)."""
    best = min(range(len(errors)), key=errors.__getitem__)
    record = {"layer": layer, "site": site, "objective": objective, "ratio": ratio, "duo": best >= n_grid}
    if objective == "loss":  # a signed loss change: a ratio to RTN's would mean nothing
        return record | {"predicted_dl": errors[best], "predicted_dl_rtn": errors[0]}
    return record | {"error_vs_rtn": errors[best] / errors[0] if errors[0] > 0 else 1.0}
