"""`quantize(model, cfg, calib)`: dispatch through the registry of quantization methods.

Each method returns {target name: QuantizedWeight} and leaves the dequantized values in the model
(so later layers calibrate on what the quantized earlier layers produce). `quantize` then swaps
every target for an integer-kernel module (`kernels.make_linear`): the model is small and fast
from then on, saves as a compressed-tensors checkpoint, and `slmkit.models.load` restores it.
`pack=False` keeps the simulated (dequantized float) weights instead, for experiments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from slmkit.compress.allocate import allocate, check_fits
from slmkit.compress.calibrate import HessianCollector, sequential
from slmkit.compress.lowrank.apply import ASVDConfig, SVDConfig, apply_asvd, apply_svd, records
from slmkit.compress.prune.apply import apply_magnitude, apply_sparsegpt, apply_wanda
from slmkit.compress.prune.config import MagnitudeConfig, SparseGPTConfig, WandaConfig
from slmkit.compress.prune.depth import prune_depth
from slmkit.compress.prune.structured import DepthPruneConfig, WidthPruneConfig, check_structured
from slmkit.compress.prune.width import prune_width
from slmkit.compress.quantize.awq import AWQConfig, apply_awq
from slmkit.compress.quantize.config import (
    GPTQConfig,
    RTNConfig,
    check_overrides,
    gguf_grid,
    gguf_name,
    grid_for,
)
from slmkit.compress.quantize.embedding import quantize_embeddings
from slmkit.compress.quantize.gptq import gptq
from slmkit.compress.quantize.smoothquant import SmoothQuantConfig, apply_smoothquant
from slmkit.compress.targets import Target, all_targets, layer_targets
from slmkit.errors import SlmkitError
from slmkit.models.arch import shared_input_sites
from slmkit.registry import Registry
from slmkit.runtime.embedding import embed_grid
from slmkit.runtime.fuse import fuse_shared_inputs
from slmkit.runtime.kernels import make_linear, warn_dense
from slmkit.runtime.modules import is_quantized
from slmkit.runtime.qweight import QuantizedWeight, check_bits, rtn, two_level


def _store(t: Target, qw: QuantizedWeight, store: dict) -> None:
    t.set_weight(qw.dequantize())
    store[t.name] = qw


def apply_rtn(model, cfg: RTNConfig, calib=None):
    check_bits(cfg.bits, cfg.group_size)
    store: dict[str, QuantizedWeight] = {}
    for t in all_targets(model, tuple(cfg.skip)):
        _store(t, rtn(t.weight(), *grid_for(cfg, t)), store)
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
            try:
                args = (t.weight(), hc.H[t.name], *grid_for(cfg, t), cfg.damp, cfg.block_size,
                        cfg.act_order, cfg.static_groups)
                qw = gptq(*args, cfg.clip_search, cfg.clip_floor)
            except SlmkitError as e:
                raise SlmkitError(f"{t.name}: {e}") from None
            _store(t, qw, store)

    sequential(model, calib, on_layer, batch_size=cfg.batch_size, description="GPTQ", dtype=cfg.calib_dtype)
    return store


QUANTIZERS = Registry("quantization method")
QUANTIZERS.add("rtn", RTNConfig, apply_rtn, "round to nearest, no calibration",
               calibrates=lambda cfg: cfg.gguf_bpw is not None)
QUANTIZERS.add("gptq", GPTQConfig, apply_gptq, "GPTQ: Hessian-based error compensation")
QUANTIZERS.add("awq", AWQConfig, apply_awq, "AWQ: activation-aware scales, then RTN")
QUANTIZERS.add("smoothquant", SmoothQuantConfig, apply_smoothquant,
               "SmoothQuant W8A8: outliers migrated into weights, int8 weights and activations")


def pack(model, store: dict[str, QuantizedWeight]) -> None:
    """Replace each quantized target by the integer-kernel module for its QuantizedWeight."""
    dense: list[tuple[str, str]] = []
    for name, qw in store.items():
        module = model.get_submodule(name)
        model.set_submodule(name, make_linear(qw, getattr(module, "bias", None), name, dense))
    warn_dense(dense, len(store))
    fuse_shared_inputs(shared_input_sites(model))


def quantize_head(model, bits: int) -> dict[str, QuantizedWeight]:
    """RTN per-channel symmetric `bits` for the output head, untying it from the input embeddings
    first if they share one tensor (so the embeddings keep their exact weights)."""
    head = model.get_output_embeddings()
    if head is None or not isinstance(head, torch.nn.Linear):
        raise SlmkitError(f"{type(model).__name__} has no linear output head to quantize (head_bits)")
    name = next(n for n, m in model.named_modules() if m is head)
    emb = model.get_input_embeddings()
    if emb is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        for c in {id(model.config): model.config, id(model.config.get_text_config()):
                  model.config.get_text_config()}.values():
            c.tie_word_embeddings = False
    qw = rtn(head.weight.detach(), bits, None, True)
    head.weight.data.copy_(qw.dequantize().to(head.weight.dtype))
    return {name: qw}


def check_quantize(model, cfg, *, pack_weights: bool = True) -> None:
    """Everything `quantize(model, cfg)` would refuse, checked without any heavy work."""
    if is_quantized(model):
        raise SlmkitError("this model is already quantized; start from the original weights")
    QUANTIZERS.for_config(cfg)
    if hasattr(cfg, "check"):
        cfg.check()
    if (pack_weights and getattr(cfg, "act_order", False) and not getattr(cfg, "static_groups", True)
            and cfg.group_size):
        raise SlmkitError("act_order without static_groups scatters each group over the columns; "
                          "integer kernels and checkpoints need contiguous groups: set "
                          "static_groups=True (or pack_weights=False for a simulation)")
    if hasattr(cfg, "overrides"):
        check_overrides(cfg)
        check_gguf_grids(model, cfg)
    head_bits = getattr(cfg, "head_bits", None)
    if head_bits is not None and not 5 <= head_bits <= 8:
        raise SlmkitError(f"head_bits must be 5-8 (per-channel int8 kernel) or None, not {head_bits!r}")
    if getattr(cfg, "embed_bits", None) is not None:
        embed_grid(cfg.embed_bits, 32)


def check_gguf_grids(model, cfg) -> None:
    """GGUF's K-quants (Q4_K, Q5_K, Q6_K) store whole blocks of 256 weights, their scales set per
    block: refuse them for a linear whose rows are not whole blocks, and GPTQ without static groups.
    With `gguf_bpw`, every linear needs at least one candidate type that fits its rows."""
    static = getattr(cfg, "static_groups", True)
    if getattr(cfg, "gguf_bpw", None) is not None:
        kquants = [n for n in cfg.gguf_types if two_level(*gguf_grid(n))]
        if kquants and not static:
            raise SlmkitError(f"gguf_types has K-quants ({', '.join(kquants)}), whose scales are set per "
                              "256-weight block: use static_groups=True")
        check_fits(all_targets(model, tuple(cfg.skip)), cfg.gguf_types,
                   f"gguf_types ({', '.join(cfg.gguf_types)})")
        return
    for t in all_targets(model, tuple(cfg.skip)):
        bits, group_size, symmetric = grid_for(cfg, t)
        if not two_level(bits, group_size, symmetric):
            continue
        name = gguf_name(bits, symmetric)
        if not static:
            raise SlmkitError(f"{t.name}: the {name} grid sets each group's scale from its whole "
                              "256-weight block: use static_groups=True")
        width = t.weight().shape[1]
        if width % 256:
            raise SlmkitError(f"{t.name}: GGUF's {name} needs rows of whole 256-weight blocks, and this "
                              f"linear has {width} inputs; give {name} only to linears whose inputs are a "
                              f"multiple of 256 (e.g. --override down:gguf_type={name})")


def quantize(model, cfg, calib=None, *, pack_weights: bool = True):
    """Quantize `model` in place with the method `cfg` configures; returns the model.

    `calib`: token ids [n, length] for methods that calibrate (see slmkit.generate.build_calibration).
    `pack_weights`: swap in integer kernels (default); False keeps simulated float weights."""
    check_quantize(model, cfg, pack_weights=pack_weights)
    entry = QUANTIZERS.for_config(cfg)
    head_bits, embed_bits = getattr(cfg, "head_bits", None), getattr(cfg, "embed_bits", None)
    allocation = None
    if getattr(cfg, "gguf_bpw", None) is not None:
        if calib is None:
            raise SlmkitError("gguf_bpw chooses block types on calibration text: pass calibration ids")
        allocation = allocate(model, calib, all_targets(model, tuple(cfg.skip)), cfg.gguf_bpw,
                              cfg.gguf_types, batch_size=getattr(cfg, "batch_size", 8))
        asked, cfg = cfg, dataclasses.replace(cfg, gguf_bpw=None, overrides={
            name: {"gguf_type": t} for name, t in allocation.types.items()})
    store = entry.fn(model, cfg, calib)
    if head_bits is not None:
        store.update(quantize_head(model, head_bits))
    if embed_bits is not None:
        quantize_embeddings(model, embed_bits, simulate=not pack_weights)
    if pack_weights:
        pack(model, store)
    else:
        model._slmkit_quantized = store
    step = {"quantize": entry.name, "config": vars(cfg)}
    if allocation is not None:
        step.update(config=vars(asked), gguf_types=allocation.record())
    step.update(getattr(model, "_slmkit_quantize_report", None) or {})  # e.g. AWQ's per-site choices
    model.__dict__.pop("_slmkit_quantize_report", None)
    model._slmkit_steps = [*getattr(model, "_slmkit_steps", []), step]
    return model


PRUNERS = Registry("pruning method")
PRUNERS.add("magnitude", MagnitudeConfig, apply_magnitude, "smallest |W| per matrix, no calibration",
            calibrates=lambda cfg: cfg.owl)
PRUNERS.add("wanda", WandaConfig, apply_wanda, "Wanda: |W| x input norm, per output row")
PRUNERS.add("sparsegpt", SparseGPTConfig, apply_sparsegpt, "SparseGPT: OBS mask and weight updates")
PRUNERS.add("depth", DepthPruneConfig, prune_depth,
            "structured: drop whole decoder layers (block influence or ppl ranking)",
            preflight=check_structured)
PRUNERS.add("width", WidthPruneConfig, prune_width,
            "structured: drop MLP channels and KV head groups, same count in every layer",
            preflight=check_structured)


LOWRANK = Registry("low-rank method")
LOWRANK.add("svd", SVDConfig, apply_svd, "truncated SVD of each linear's weight", calibrates=False)
LOWRANK.add("asvd", ASVDConfig, apply_asvd, "activation-aware SVD: channels weighted by mean|x|^alpha")


def check_lowrank(model, cfg) -> None:
    """What `lowrank(model, cfg)` would refuse before doing any work."""
    if is_quantized(model):
        raise SlmkitError("this model is quantized; factorize the float model, then quantize")
    LOWRANK.for_config(cfg)


def lowrank(model, cfg, calib=None) -> dict:
    """Factorize the decoder linears of `model` in place (W ~= up @ down) with the method `cfg`
    configures; returns {"layers": [...], "params_before", "params_after"}. Save with
    slmkit.models.save (reload with slmkit.models.load), or merge_lowrank(model) first for a
    dense standard checkpoint."""
    check_lowrank(model, cfg)
    entry = LOWRANK.for_config(cfg)
    before = model.num_parameters()
    done = entry.fn(model, cfg, calib)
    model._slmkit_lowrank = [*getattr(model, "_slmkit_lowrank", []), *records(done)]
    report = {"layers": records(done), "params_before": before, "params_after": model.num_parameters()}
    model._slmkit_steps = [*getattr(model, "_slmkit_steps", []),
                           {"lowrank": entry.name, "config": vars(cfg),
                            "params_before": before, "params_after": report["params_after"]}]
    return report


def check_prune(model, cfg) -> None:
    """What `prune(model, cfg)` would refuse before doing any work."""
    if is_quantized(model):
        raise SlmkitError("this model is quantized; prune the float model, then quantize")
    entry = PRUNERS.for_config(cfg)
    if entry.preflight is not None:
        entry.preflight(model, cfg)


def prune(model, cfg, calib=None) -> dict:
    """Prune `model` in place with the method `cfg` configures; returns the method's report
    (unstructured: per target / layer / total sparsity and parameters, see
    slmkit.compress.prune.apply.prune_report), also kept at `model._slmkit_prune_report`.

    `calib`: token ids [n, length] for methods that calibrate (see slmkit.generate.build_calibration)."""
    check_prune(model, cfg)
    entry = PRUNERS.for_config(cfg)
    n_steps = len(getattr(model, "_slmkit_steps", []))
    report = entry.fn(model, cfg, calib)
    model._slmkit_prune_report = report
    if len(getattr(model, "_slmkit_steps", [])) == n_steps:  # structured methods record their own
        step = {"prune": entry.name, "config": vars(cfg),
                **{k: report[k] for k in ("total", "layers") if k in report}}
        model._slmkit_steps = [*getattr(model, "_slmkit_steps", []), step]
    return report


@dataclass(frozen=True)
class StepKind:
    """A kind of compression step: its methods, the function that applies one, and the cheap
    check of (model, config) that runs before calibration."""

    registry: Registry
    apply: Callable
    check: Callable


STEP_KINDS = {"quantize": StepKind(QUANTIZERS, quantize, check_quantize),
              "prune": StepKind(PRUNERS, prune, check_prune),
              "lowrank": StepKind(LOWRANK, lowrank, check_lowrank)}
