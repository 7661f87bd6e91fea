"""Unstructured pruning on a model: magnitude, Wanda and SparseGPT on top of the layer-sequential
calibration loop (`slmkit.compress.calibrate.sequential`), and the report `prune()` returns.

Each `apply_*(model, cfg, calib)` validates `cfg`, plans a sparsity per decoder layer (uniform,
or OWL's), zeroes weights in place (dense tensors with exact zeros, so any loader reads them and
the zeros survive save/reload) and returns the report (see `prune_report`).

OWL needs every layer's outlier ratio before the first layer is pruned (the ratios are
normalised over layers), so it runs one extra statistics-only `sequential` walk over the dense
model (same cost as a calibration pass without the pruning), then the pruning walk.
Wanda and SparseGPT then calibrate each layer on the outputs of the already-pruned layers before
it (as their reference codes and llm-compressor do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from slmkit.compress.calibrate import HessianCollector, InputHooks, sequential
from slmkit.compress.prune.config import (
    MagnitudeConfig,
    PruneConfig,
    SparseGPTConfig,
    WandaConfig,
    check_config,
)
from slmkit.compress.prune.magnitude import magnitude
from slmkit.compress.prune.nm import holds_nm
from slmkit.compress.prune.owl import outlier_ratio, owl_sparsities
from slmkit.compress.prune.sparsegpt import sparsegpt
from slmkit.compress.prune.wanda import wanda, wanda_metric
from slmkit.compress.targets import all_targets, layer_targets
from slmkit.errors import SlmkitError
from slmkit.models.arch import get_arch

if TYPE_CHECKING:
    from torch import nn


class InputNorms(InputHooks):
    """`with InputNorms({name: module}) as st: run()` collects, per module, the L2 norm of each
    input feature over all calibration tokens, scaled as sqrt(mean over tokens of x_j^2):
    `st.norms()[name]` float32 [in]. (Wanda's ||X_j||_2 up to a constant factor.)"""

    def __init__(self, modules: dict[str, "nn.Module"]):
        super().__init__(modules)
        self.sq_sum: dict[str, torch.Tensor] = {}    # float32 [in]: sum over tokens of x_j^2
        self.tokens: dict[str, int] = {}

    def observe(self, name: str, x: torch.Tensor) -> None:   # x [tokens, in]
        sq = x.pow(2).sum(0)
        self.sq_sum[name] = sq if name not in self.sq_sum else self.sq_sum[name] + sq
        self.tokens[name] = self.tokens.get(name, 0) + x.shape[0]

    def norms(self) -> dict[str, torch.Tensor]:
        return {k: (v / max(self.tokens[k], 1)).sqrt() for k, v in self.sq_sum.items()}


@dataclass
class Plan:
    """The sparsity asked of each decoder layer, and (OWL) each layer's outlier ratio."""
    sparsity: list[float]
    outlier_ratio: list[float] | None = None


def _need_calib(calib, what: str) -> None:
    if calib is None:
        raise SlmkitError(f"{what} needs calibration data: token ids [n, length] "
                          "(see slmkit.generate.build_calibration)")


def plan_layers(model, cfg: PruneConfig, calib, sparsity: float) -> Plan:
    """Uniform `sparsity`, or OWL's per-layer sparsities from a statistics-only walk."""
    n_layers = len(get_arch(model).decoder_layers(model))
    if not cfg.owl:
        return Plan([sparsity] * n_layers)
    _need_calib(calib, "OWL")
    skip = tuple(cfg.skip)
    ratios: list[float] = []

    def on_layer(index, layer, run):
        targets = layer_targets(model, index, skip)
        with InputNorms({t.name: t.module for t in targets}) as st:
            run()
        norms = st.norms()
        metric = torch.cat([wanda_metric(t.weight(), norms[t.name]).reshape(-1) for t in targets])
        ratios.append(outlier_ratio(metric, cfg.owl_m) if len(metric) else 0.0)

    sequential(model, calib, on_layer, batch_size=cfg.batch_size, description="OWL statistics",
               dtype=cfg.calib_dtype)
    return Plan(owl_sparsities(ratios, sparsity, cfg.owl_lambda), ratios)


def _prune_each(model, cfg: PruneConfig, calib, description: str, collector, prune_one) -> dict:
    """The shared walk: `collector(modules)` hooks statistics (None: no calibration needed);
    `prune_one(target, stats, sparsity, nm)` returns the new [out, in] weight."""
    sparsity, nm = check_config(cfg)
    if collector is not None:
        _need_calib(calib, description)
    plan = plan_layers(model, cfg, calib, sparsity)
    skip = tuple(cfg.skip)

    def prune_layer(index, stats):
        for t in layer_targets(model, index, skip):
            try:
                w = prune_one(t, stats, plan.sparsity[index], nm)
            except SlmkitError as e:
                raise SlmkitError(f"{t.name}: {e}") from None
            t.set_weight(w)

    if collector is None:
        for index in range(len(plan.sparsity)):
            prune_layer(index, None)
    else:
        def on_layer(index, layer, run):
            with collector({t.name: t.module for t in layer_targets(model, index, skip)}) as st:
                run()
            prune_layer(index, st)

        sequential(model, calib, on_layer, batch_size=cfg.batch_size, description=description,
                   dtype=cfg.calib_dtype)
    return prune_report(model, skip, plan, nm)


def apply_magnitude(model, cfg: MagnitudeConfig, calib=None) -> dict:
    return _prune_each(model, cfg, calib, "magnitude", None,
                       lambda t, st, s, nm: magnitude(t.weight(), s, nm))


def apply_wanda(model, cfg: WandaConfig, calib=None) -> dict:
    def one(t, st, s, nm):
        return wanda(t.weight(), st.norms()[t.name], s, nm)
    return _prune_each(model, cfg, calib, "Wanda", InputNorms, one)


def apply_sparsegpt(model, cfg: SparseGPTConfig, calib=None) -> dict:
    def one(t, hc, s, nm):
        return sparsegpt(t.weight(), hc.H.pop(t.name), s, nm, cfg.block_size, cfg.damp,
                         scope=cfg.mask_scope)
    return _prune_each(model, cfg, calib, "SparseGPT", HessianCollector, one)


def _counts(zeros: int, params: int) -> dict:
    return {"sparsity": zeros / params if params else 0.0, "zeros": zeros, "params": params,
            "nonzero": params - zeros}


def prune_report(model, skip: tuple[str, ...], plan: Plan, nm: tuple[int, int] | None) -> dict:
    """What pruning achieved, counted on the model's weights as they now are:

    - "targets": {target name: {layer, sparsity, zeros, params, nonzero}} per pruned matrix;
    - "layers": [{layer, target (the sparsity asked), sparsity, zeros, params, nonzero,
      outlier_ratio (OWL only)}] per decoder layer;
    - "total": {sparsity, zeros, params, nonzero} over all pruned matrices, plus
      "model_params" / "model_nonzero" over every parameter of the model;
    - "nm": the pattern ("N:M" or None) and, with a pattern, "nm_holds": whether every pruned
      matrix satisfies it."""
    targets, layers = {}, []
    for t in all_targets(model, skip):
        w = t.weight()
        targets[t.name] = {"layer": t.layer, **_counts(int((w == 0).sum()), w.numel())}
    for i, s in enumerate(plan.sparsity):
        mine = [v for v in targets.values() if v["layer"] == i]
        row = {"layer": i, "target": s, **_counts(sum(v["zeros"] for v in mine),
                                                  sum(v["params"] for v in mine))}
        if plan.outlier_ratio is not None:
            row["outlier_ratio"] = plan.outlier_ratio[i]
        layers.append(row)
    total = _counts(sum(v["zeros"] for v in targets.values()), sum(v["params"] for v in targets.values()))
    params = list(model.parameters())
    total["model_params"] = sum(p.numel() for p in params)
    total["model_nonzero"] = sum(int((p != 0).sum()) for p in params)
    report = {"targets": targets, "layers": layers, "total": total,
              "nm": None if nm is None else f"{nm[0]}:{nm[1]}"}
    if nm is not None:
        report["nm_holds"] = all(holds_nm(t.weight(), *nm) for t in all_targets(model, skip))
    return report
