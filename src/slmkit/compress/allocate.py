"""Per-linear GGUF block types chosen by measured sensitivity within a size budget.

For every target linear and every candidate block type its rows fit, the predicted increase of the
mean next-token loss when the linear's weight W becomes its round-to-nearest value on that grid,
Wq = W + dW, to second order with the output channels' diagonal Fisher weights F
(`slmkit.compress.sensitivity`) and the inputs' Gram matrix G = X^T X / n on calibration text:

    dL ~ 1/2 sum_c F_c dW_c G dW_c^T

The linears' losses are taken as additive, and the types are chosen by the greedy solution of the
knapsack: every linear starts on its smallest type, and the upgrade with the largest loss saved per
byte is taken while the bytes fit the budget (over each linear's lower convex hull of (bytes,
loss), where that greedy order is the optimum of the relaxed problem). GPTQ then lowers every
linear's error below RTN's; the choice assumes it does so alike for every type.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from slmkit.compress.calibrate import HessianCollector, sequential
from slmkit.compress.quantize.config import gguf_grid
from slmkit.compress.sensitivity import loss_sensitivity
from slmkit.compress.targets import Target, layer_targets
from slmkit.errors import SlmkitError
from slmkit.runtime.ggml_blocks import block_type
from slmkit.runtime.qweight import rtn

if TYPE_CHECKING:
    import torch

DEFAULT_TYPES = ("q4_0", "q4_k", "q5_0", "q5_k", "q6_k", "q8_0")


@dataclass
class Allocation:
    """The chosen type of each linear (by name), with what the choice was made from."""

    types: dict[str, str]
    budget_bytes: int
    bytes: int                                     # of the chosen types, all targets
    predicted_dl: float                            # sum of the chosen types' predicted loss increases
    options: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)  # name -> type -> (bytes, dL)

    def record(self) -> dict:
        counts: dict[str, int] = {}
        for t in self.types.values():
            counts[t] = counts.get(t, 0) + 1
        return {"budget_bytes": self.budget_bytes, "bytes": self.bytes,
                "predicted_dl": self.predicted_dl, "type_counts": counts, "types": self.types}


def type_bytes(name: str, shape: tuple[int, int]) -> int | None:
    """Bytes of a [out, in] weight in block type `name`, or None when its rows do not fit the blocks."""
    t = block_type(name)
    if shape[1] % t.weights:
        return None
    return shape[0] * shape[1] // t.weights * t.block_bytes


def check_types(types) -> tuple[str, ...]:
    types = tuple(types)
    if not types:
        raise SlmkitError("give at least one GGUF block type to choose from")
    for name in types:
        gguf_grid(name)
    return types


def check_fits(targets: list[Target], types, label: str) -> None:
    """Refuse a target whose rows fit none of `types` (`label` names them in the message)."""
    for t in targets:
        if all(type_bytes(name, tuple(t.weight().shape)) is None for name in types):
            raise SlmkitError(f"{t.name}: none of {label} fits its rows of {t.weight().shape[1]} "
                              "inputs; add q8_0, q5_0 or q4_0")


def predicted_losses(model, calib: "torch.Tensor", targets: list[Target], types: tuple[str, ...], *,
                     rows: int = 32, batch_size: int = 8) -> dict[str, dict[str, tuple[int, float]]]:
    """name -> type -> (bytes, predicted loss increase in nats per token) for every target and every
    type its rows fit, from the first `rows` calibration sequences; types that fit none of a
    target's rows are left out for it."""
    import torch

    calib = calib[:rows]
    fisher = loss_sensitivity(model, calib, targets).fisher
    wanted = {t.name for t in targets}
    out: dict[str, dict[str, tuple[int, float]]] = {}

    def on_layer(index, layer, run):
        mine = [t for t in layer_targets(model, index, ()) if t.name in wanted]
        if not mine:
            return
        with HessianCollector({t.name: t.module for t in mine}) as hc:
            run()
        for t in mine:
            w = t.weight().float()
            gram = hc.H[t.name] / 2
            f = fisher[t.name].float()
            options = {}
            for name in types:
                size = type_bytes(name, tuple(w.shape))
                if size is None:
                    continue
                dw = rtn(w, *gguf_grid(name)).dequantize() - w
                options[name] = (size, float(0.5 * (((dw @ gram) * dw).sum(-1) * f).sum()))
            out[t.name] = options

    with torch.no_grad():
        sequential(model, calib, on_layer, batch_size=batch_size, description="Type sensitivity")
    return out


def choose(options: dict[str, dict[str, tuple[int, float]]], budget_bytes: int) -> Allocation:
    """The greedy knapsack over `options` (name -> type -> (bytes, dL)) within `budget_bytes`."""
    hulls = {name: _lower_hull(opts) for name, opts in options.items()}
    empty = [name for name, hull in hulls.items() if not hull]
    if empty:
        raise SlmkitError(f"{empty[0]}: none of the candidate GGUF types fits its rows")
    pick = {name: 0 for name in hulls}
    used = sum(hull[0][1] for hull in hulls.values())
    if used > budget_bytes:
        raise SlmkitError(f"the budget of {budget_bytes:,} bytes is below the smallest choice "
                          f"({used:,} bytes): raise it or add a smaller type")
    heap = []

    def push(name):
        hull, i = hulls[name], pick[name]
        if i + 1 < len(hull):
            (_, b0, l0), (_, b1, l1) = hull[i], hull[i + 1]
            heapq.heappush(heap, (-(l0 - l1) / (b1 - b0), name, i))

    for name in hulls:
        push(name)
    while heap:
        _, name, i = heapq.heappop(heap)
        hull = hulls[name]
        extra = hull[i + 1][1] - hull[i][1]
        if used + extra > budget_bytes:
            continue                  # too big now; a smaller upgrade of another linear may still fit
        pick[name], used = i + 1, used + extra
        push(name)
    types = {name: hulls[name][i][0] for name, i in pick.items()}
    return Allocation(types, budget_bytes, used, sum(hulls[n][i][2] for n, i in pick.items()), options)


def _lower_hull(opts: dict[str, tuple[int, float]]) -> list[tuple[str, int, float]]:
    """The (type, bytes, dL) points of one linear on the lower convex hull, by increasing bytes:
    each costs more and loses less than the one before, at a falling rate."""
    pts = sorted(((b, dl, name) for name, (b, dl) in opts.items()), key=lambda p: (p[0], p[1]))
    hull: list[tuple[int, float, str]] = []
    for p in pts:
        if hull and p[1] >= hull[-1][1]:
            continue                  # no cheaper in loss than a smaller type
        while len(hull) >= 2:
            (b1, l1, _), (b2, l2, _) = hull[-2], hull[-1]
            if (l1 - l2) * (p[0] - b2) <= (l2 - p[1]) * (b2 - b1):
                hull.pop()            # the middle point saves less per byte than the next one
            else:
                break
        hull.append(p)
    return [(name, b, dl) for b, dl, name in hull]


def allocate(model, calib: "torch.Tensor", targets: list[Target], bits_per_weight: float,
             types=DEFAULT_TYPES, **kwargs) -> Allocation:
    """GGUF block types for `targets` whose bytes average at most `bits_per_weight` over their
    weights, chosen by `predicted_losses` on `calib` [n, length]."""
    types = check_types(types)
    if not isinstance(bits_per_weight, (int, float)) or not 1 <= bits_per_weight <= 16:
        raise SlmkitError(f"bits per weight must be a number in [1, 16], not {bits_per_weight!r}")
    n = sum(t.weight().numel() for t in targets)
    budget = int(bits_per_weight * n / 8)
    check_fits(targets, types, ", ".join(types))
    return choose(predicted_losses(model, calib, targets, types, **kwargs), budget)
