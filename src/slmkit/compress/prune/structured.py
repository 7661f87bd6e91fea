"""Structured pruning: physically remove decoder layers (depth) or MLP channels and attention heads
(width), leaving a smaller, faster model with a standard Hugging Face config.

    report = prune_depth(model, DepthPruneConfig(target=0.25), calib)   # drop whole layers
    report = prune_width(model, WidthPruneConfig(target="100M"), calib) # narrower MLPs / fewer heads

Both edit `model` in place (smaller modules, updated `model.config`), so `slmkit.models.save` writes
a folder that plain `AutoModelForCausalLM.from_pretrained` loads. The math and the surgery live in
`depth.py` and `width.py`; this file holds the configs, target parsing and the shared helpers.

Target semantics (`parse_target`): a fraction (0.25, "25%") is the share of the model's parameters
to REMOVE; a count ("100M", "1.2B", "500K", 100_000_000) is the parameter count of the RESULT. Pruning
removes whole units (layers, channels, KV groups), the fewest that reach the target, so the result
is at most the target size; a target needing every layer / head group / channel gone is an error.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from slmkit.compress.calibrate import CalibDtype, calib_dtype_field
from slmkit.errors import SlmkitError
from slmkit.models.arch import ArchSpec, get_arch
from slmkit.runtime.modules import is_quantized

if TYPE_CHECKING:
    import torch
    from torch import nn

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_TARGET_HELP = ("a fraction of the parameters to remove (0.25 or '25%'), or the parameter count of "
                "the result ('100M', '1.2B', '500K')")


@dataclass
class DepthPruneConfig:
    """Drop whole decoder layers: how many (`target`) and how they are ranked."""

    target: str | float = field(default=0.25, metadata={"help": _TARGET_HELP})
    ranking: Literal["block_influence", "ppl"] = field(default="block_influence", metadata={
        "help": "layer ranking: block_influence = 1 - mean cos(layer input, layer output) over the "
                "calibration tokens, lowest removed (ShortGPT); ppl = calibration loss with each "
                "single layer skipped, least harmful removed (costs n_layers + 1 forwards, "
                "in float32 whatever calib_dtype says: bf16 noise could reorder close losses)"})
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
    calib_dtype: CalibDtype = calib_dtype_field()


@dataclass
class WidthPruneConfig:
    """Narrow every layer's MLP and attention: how much (`target`), where from, and the width alignment."""

    target: str | float = field(default=0.25, metadata={"help": _TARGET_HELP})
    prune: Literal["both", "mlp", "heads"] = field(default="both", metadata={
        "help": "what to narrow: MLP intermediate channels, attention heads (whole KV groups under "
                "GQA), or both; the same count in every layer. gpt2/opt tie head_dim to "
                "hidden/heads, so 'both' prunes only their MLPs there and 'heads' is an error"})
    attn_share: float | None = field(default=None, metadata={
        "help": "with prune='both': share of the removed parameters taken from attention, rounded "
                "to whole KV groups (the MLP removes the rest); None = attention's share of the "
                "prunable (attention + MLP) parameters"})
    align: int = field(default=64, metadata={
        "help": "keep a multiple of this many MLP channels (rounding the removal up): int4 "
                "kernels and GGUF blocks need multiples of 32, and a quantization group must "
                "divide the width; 1 = exactly the target"})
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
    calib_dtype: CalibDtype = calib_dtype_field()


# ---- targets ---------------------------------------------------------------------------------
def count_params(module: "nn.Module") -> int:
    """Parameters of `module`, tied ones counted once."""
    return sum(p.numel() for p in module.parameters())


def count_bytes(module: "nn.Module") -> int:
    """Bytes of the parameters and persistent buffers of `module` (what a checkpoint stores)."""
    seen, total = set(), 0
    for t in module.state_dict().values():
        if t.numel() and t.data_ptr() in seen:  # tied (shared) tensors count once
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _parse_number(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([KMBGT]?)\s*", text, re.IGNORECASE)
    if not m:
        raise SlmkitError(f"cannot read target {text!r}; give {_TARGET_HELP}")
    return float(m.group(1)) * _SUFFIX[m.group(2).upper()]


def parse_target(target: str | float, model_or_total: "nn.Module | int") -> int:
    """The number of parameters to remove for `target` (see the module docstring)."""
    total = model_or_total if isinstance(model_or_total, int) else count_params(model_or_total)
    if isinstance(target, bool) or not isinstance(target, (str, int, float)):
        raise SlmkitError(f"target must be {_TARGET_HELP}, not {target!r}")
    fraction: float | None = None
    if isinstance(target, str):
        text = target.strip()
        if text.endswith("%"):
            fraction = _parse_number(text[:-1]) / 100
        else:
            value = _parse_number(text)
            fraction = value if value < 1 and not re.search(r"[KMBGT]", text, re.IGNORECASE) else None
            count = value
    elif 0 <= target < 1:
        fraction = float(target)
    else:
        count = float(target)
    if fraction is not None:
        if not 0 < fraction < 1:
            raise SlmkitError(f"target fraction {target!r} must be strictly between 0 and 1 "
                              "(the share of parameters to remove)")
        return max(1, round(fraction * total))
    if count < 1 or count != int(count):
        raise SlmkitError(f"target {target!r} must be a whole parameter count >= 1 or a fraction")
    if count >= total:
        raise SlmkitError(f"target {target!r} ({int(count):,} parameters) is not smaller than the "
                          f"model ({total:,} parameters); nothing to remove")
    return total - int(count)


def units_needed(remove: int, per_unit: int) -> int:
    """The fewest whole units of `per_unit` parameters that remove at least `remove`."""
    return math.ceil(remove / per_unit) if remove > 0 else 0


# ---- surgery helpers -------------------------------------------------------------------------
def check_prunable(model: "nn.Module", calib) -> ArchSpec:
    """The adapter for `model`, after checking the model and calibration data can be pruned."""
    spec = get_arch(model)
    if is_quantized(model):
        raise SlmkitError("structured pruning needs the float model; prune before quantizing")
    if calib is None:
        raise SlmkitError("structured pruning needs calibration data: token ids [n, length] "
                          "(see slmkit.generate.build_calibration)")
    return spec


def check_structured(model: "nn.Module", cfg) -> None:
    """Before any calibration: the model has an adapter, is not quantized, and `cfg.target`
    names a removable amount of it."""
    get_arch(model)
    if is_quantized(model):
        raise SlmkitError("structured pruning needs the float model; prune before quantizing")
    parse_target(cfg.target, count_params(model))


def check_config(config, what: str, hint: str = "") -> None:
    """Raise a clear error unless `config` survives a save/load round trip (the config class's own
    validation, e.g. phi3's longrope factors sized by hidden_size / heads)."""
    try:
        type(config).from_dict(config.to_dict())
    except Exception as e:  # noqa: BLE001 - any validation failure means it would not load
        raise SlmkitError(f"{what} gives a {type(config).__name__} that would not load: "
                          f"{str(e).strip().splitlines()[-1].strip()}{hint}") from None


def rebuild_layer(model: "nn.Module", old: "nn.Module", index: int,
                  state: dict[str, "torch.Tensor"]) -> "nn.Module":
    """A fresh decoder layer of `old`'s class, built from `model.config` (already updated to the
    new sizes) at position `index`, holding the tensors `state`. Building from the config sets
    every derived attribute (layer_idx for the KV cache, sliding window, head counts) exactly as
    `from_pretrained` will; the strict load checks that each tensor's shape matches the config."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: random init is merely slower
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        new = type(old)(model.config, layer_idx=index)
    try:
        new.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise SlmkitError(f"structured pruning produced tensors that do not match the updated "
                          f"{type(model.config).__name__} ({e})") from None
    return new.train(old.training)


def layer_sizes(model: "nn.Module", spec: ArchSpec) -> list[dict]:
    """Per decoder layer: params and bytes."""
    return [{"params": count_params(layer), "bytes": count_bytes(layer)}
            for layer in spec.decoder_layers(model)]


def totals(before: tuple[int, int], model: "nn.Module") -> dict:
    params, nbytes = count_params(model), count_bytes(model)
    return {"params_before": before[0], "params_after": params,
            "bytes_before": before[1], "bytes_after": nbytes,
            "fraction_removed": round(1 - params / before[0], 6)}


def record_step(model: "nn.Module", name: str, cfg, summary: dict) -> None:
    """Append this step to `model._slmkit_steps` (saved into slmkit.json)."""
    step = {"prune": name, "config": asdict(cfg), **summary}
    model._slmkit_steps = [*getattr(model, "_slmkit_steps", []), step]
