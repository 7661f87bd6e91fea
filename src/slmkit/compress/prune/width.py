"""Width pruning: remove MLP intermediate channels and attention heads (whole KV groups under GQA),
the same number in every layer so the result is a standard config with smaller sizes.

Importance = the mean norm, over calibration tokens, of a unit's contribution to the layer output
(the residual stream), measured on the layer-sequential loop:
- MLP channel j: h_j = act(gate_j x) * up_j x (gated) or act(fc1_j x) (gpt2/opt) is down's input
  column j, contributing h_j * W_down[:, j], so importance_j = mean_t |h_j| * ||W_down[:, j]||.
- attention head h: its slice a_h [head_dim] of o's input contributes W_o[:, h] a_h; importance_h
  = mean_t ||W_o[:, h] a_h||; a KV group's importance sums its query heads'. Removing a group drops
  its query heads, its k/v head and their o columns; num_key_value_groups stays the same.
Within the loop the chosen units are zeroed (down / o input columns, exactly equivalent to removal)
before the next layer calibrates ("true sequential"); the physical surgery follows the loop.

Split (prune="both"): attention gives round(share * removed / per-group cost) KV groups per layer
(share = `attn_share`, or attention's share of the prunable parameters), at most all but one; the
MLP removes the fewest channels that reach the rest of the target, then rounds up so the kept
channel count is a multiple of `align` (64 by default: int4 kernels, GGUF blocks and quantization
groups need such widths; SmolLM2's 1536 cut by the exact 25% target would leave 1057).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from slmkit.compress.calibrate import sequential
from slmkit.compress.prune.structured import (
    WidthPruneConfig,
    check_config,
    check_prunable,
    count_bytes,
    count_params,
    layer_sizes,
    parse_target,
    rebuild_layer,
    record_step,
    totals,
    units_needed,
)
from slmkit.errors import SlmkitError
from slmkit.models.arch import ArchSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

_MLP_IN = ("gate", "up", "gate_up")
_ATTN_IN = ("q", "k", "v", "qkv")


@dataclass
class Shape:
    """The prunable sizes of one decoder layer (every layer of a standard config has the same)."""
    channels: int     # MLP intermediate size
    heads: int        # query heads
    kv_heads: int     # KV groups
    head_dim: int
    per_channel: int  # parameters one MLP channel costs (its rows/columns and biases)
    per_group: int    # parameters one KV group costs (q/k/v rows, biases, o columns)
    heads_prunable: bool

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def _numel(module: "nn.Module") -> int:
    return sum(p.numel() for name, p in module.named_parameters() if name in ("weight", "bias"))


def _w(module: "nn.Module", conv1d: bool) -> "torch.Tensor":
    """The weight as [out, in] (a view)."""
    return module.weight.T if conv1d else module.weight


def layer_shape(model: "nn.Module", spec: ArchSpec) -> Shape:
    config, layer = model.config, spec.decoder_layers(model)[0]
    lin = spec.linears(layer)
    channels = _w(lin["down"], spec.conv1d).shape[1]
    heads = getattr(config, spec.heads_attr)
    kv = getattr(config, spec.kv_heads_attr, None) if spec.kv_heads_attr else None
    kv = kv or heads
    head_dim = _w(lin["o"], spec.conv1d).shape[1] // heads
    mlp_in = sum(_numel(lin[r]) for r in _MLP_IN if r in lin)
    attn_in = sum(_numel(lin[r]) for r in _ATTN_IN if r in lin)
    return Shape(channels, heads, kv, head_dim,
                 per_channel=(mlp_in + lin["down"].weight.numel()) // channels,
                 per_group=(attn_in + lin["o"].weight.numel()) // kv,
                 heads_prunable=spec.head_dim_attr is not None)


def plan(shape: Shape, n_layers: int, remove: int, cfg: WidthPruneConfig) -> tuple[int, int]:
    """(channels, KV groups) to remove in every layer so that at least `remove` params go."""
    if cfg.prune not in ("both", "mlp", "heads"):
        raise SlmkitError(f"prune must be both, mlp or heads, not {cfg.prune!r}")
    if cfg.prune == "heads" and not shape.heads_prunable:
        raise SlmkitError("this architecture ties head_dim to hidden_size / heads, so a standard "
                          "config cannot state fewer heads; use prune='mlp'")
    if cfg.attn_share is not None and not 0 <= cfg.attn_share <= 1:
        raise SlmkitError(f"attn_share must be in [0, 1], not {cfg.attn_share}")
    pc, pg = shape.per_channel * n_layers, shape.per_group * n_layers  # per unit, all layers
    max_c, max_g = shape.channels - 1, (shape.kv_heads - 1 if shape.heads_prunable else 0)
    if cfg.prune == "mlp":
        c, g = units_needed(remove, pc), 0
    elif cfg.prune == "heads":
        c, g = 0, units_needed(remove, pg)
    else:
        attn, mlp = shape.per_group * shape.kv_heads, shape.per_channel * shape.channels
        share = cfg.attn_share if cfg.attn_share is not None else attn / (attn + mlp)
        g = min(round(share * remove / pg), max_g)
        c = units_needed(remove - g * pg, pc)
        if c > max_c:  # the MLP cannot take the rest: more heads
            c = max_c
            g = max(g, units_needed(remove - c * pc, pg))
    if not isinstance(cfg.align, int) or cfg.align < 1:
        raise SlmkitError(f"align must be a positive integer, not {cfg.align!r}")
    if c and cfg.align > 1:  # keep a multiple of `align` channels (or all the remainder)
        kept = (shape.channels - c) // cfg.align * cfg.align
        c = shape.channels - kept if kept else c
    if c > max_c or g > max_g or (cfg.prune == "heads" and g == 0):
        most = (max_c * pc if cfg.prune != "heads" else 0) + (max_g * pg if cfg.prune != "mlp" else 0)
        raise SlmkitError(f"removing {remove:,} parameters would leave fewer than one MLP channel "
                          f"or one attention head group per layer; prune={cfg.prune!r} can remove "
                          f"at most {most:,}")
    return c, g


def _head_importance(x: "torch.Tensor", w_o: "torch.Tensor", heads: int) -> "torch.Tensor":
    """Sum over tokens of ||W_o[:, h] a_h|| for each head: x [..., heads*hd], w_o [out, heads*hd]."""
    import torch

    x = x.reshape(-1, heads, x.shape[-1] // heads).float()  # [T, H, hd]
    w = w_o.float().reshape(w_o.shape[0], heads, -1)         # [out, H, hd]
    out = torch.zeros(heads)
    for h in range(heads):
        out[h] = (x[:, h] @ w[:, h].T).norm(dim=-1).sum()    # [T, out] -> norms -> sum
    return out


def score_and_mask(model: "nn.Module", spec: ArchSpec, shape: Shape, calib: "torch.Tensor",
                   n_channels: int, n_groups: int, batch_size: int,
                   dtype: str = "float32") -> list[dict]:
    """Per layer: the channels / KV groups of lowest importance, zeroed in place as chosen."""
    import torch

    chosen: list[dict] = []

    def on_layer(index: int, layer: "nn.Module", run: Callable[[], None]) -> None:
        lin = spec.linears(layer)
        down, o = lin["down"], lin["o"]
        chan, head, tokens = torch.zeros(shape.channels), torch.zeros(shape.heads), [0]

        def down_hook(module, args):
            x = args[0].reshape(-1, args[0].shape[-1])  # [T, channels]
            chan.add_(x.abs().float().sum(0))
            tokens[0] += x.shape[0]

        def o_hook(module, args):
            head.add_(_head_importance(args[0], _w(o, spec.conv1d), shape.heads))

        hooks = [down.register_forward_pre_hook(down_hook)]
        if n_groups:
            hooks.append(o.register_forward_pre_hook(o_hook))
        try:
            run()
        finally:
            for h in hooks:
                h.remove()
        with torch.no_grad():
            chan_score = chan / tokens[0] * _w(down, spec.conv1d).float().norm(dim=0)  # [channels]
            group_score = (head / tokens[0]).reshape(shape.kv_heads, shape.group).sum(1)  # [kv]
            channels = sorted(chan_score.argsort(stable=True)[:n_channels].tolist())
            groups = sorted(group_score.argsort(stable=True)[:n_groups].tolist()) if n_groups else []
            heads = [g * shape.group + r for g in groups for r in range(shape.group)]
            cols = [h * shape.head_dim + d for h in heads for d in range(shape.head_dim)]
            _w(down, spec.conv1d)[:, channels] = 0
            _w(o, spec.conv1d)[:, cols] = 0
        chosen.append({"removed_channels": channels, "removed_kv_groups": groups,
                       "removed_heads": heads, "group_importance": group_score.tolist()})

    sequential(model, calib, on_layer, batch_size=batch_size, description="width importance", dtype=dtype)
    return chosen


def _keep(n: int, removed: list[int], unit: int = 1) -> "torch.Tensor":
    """Indices of the kept rows when units of `unit` consecutive rows in `removed` go."""
    import torch

    gone = set(removed)
    return torch.tensor([u * unit + d for u in range(n) if u not in gone for d in range(unit)],
                        dtype=torch.long)


def _slice(state: dict, path: str, idx: "torch.Tensor", out_dim: bool, conv1d: bool) -> None:
    """Keep rows `idx` of a linear's output (out_dim, with its bias) or of its input."""
    dim = (1 if conv1d else 0) if out_dim else (0 if conv1d else 1)
    state[f"{path}.weight"] = state[f"{path}.weight"].index_select(dim, idx).contiguous()
    if out_dim and state.get(f"{path}.bias") is not None:
        state[f"{path}.bias"] = state[f"{path}.bias"].index_select(0, idx).contiguous()


def sliced_state(spec: ArchSpec, shape: Shape, layer: "nn.Module", removed: dict) -> dict:
    """The layer's state dict with the removed channels' and KV groups' rows/columns cut out."""
    import torch

    state, paths, cv = layer.state_dict(), spec.linear_paths(), spec.conv1d
    if removed["removed_channels"]:
        keep = _keep(shape.channels, removed["removed_channels"])  # [kept channels]
        for role in ("gate", "up"):
            if role in paths:
                _slice(state, paths[role], keep, True, cv)
        if "gate_up" in paths:  # [gate; up] stacked along the output
            _slice(state, paths["gate_up"], torch.cat([keep, keep + shape.channels]), True, cv)
        _slice(state, paths["down"], keep, False, cv)
    if removed["removed_kv_groups"]:
        hd = shape.head_dim
        q = _keep(shape.heads, removed["removed_heads"], hd)         # [kept heads * hd]
        kv = _keep(shape.kv_heads, removed["removed_kv_groups"], hd)  # [kept groups * hd]
        if "qkv" in paths:  # [q; k; v] stacked along the output
            q_rows = shape.heads * hd
            rows = torch.cat([q, q_rows + kv, q_rows + shape.kv_heads * hd + kv])
            _slice(state, paths["qkv"], rows, True, cv)
        else:
            _slice(state, paths["q"], q, True, cv)
            _slice(state, paths["k"], kv, True, cv)
            _slice(state, paths["v"], kv, True, cv)
        _slice(state, paths["o"], q, False, cv)
    return state


def prune_width(model: "nn.Module", cfg: WidthPruneConfig, calib: "torch.Tensor", *,
                record: bool = True) -> dict:
    """Remove MLP channels and KV head groups in place until `cfg.target` is met; returns the
    report: {"removed_channels_per_layer", "removed_kv_groups_per_layer", "config": new sizes,
    "layers": [per layer: params/bytes before and after, removed channels/heads/KV groups],
    totals}. Records the step in `model._slmkit_steps`."""
    spec = check_prunable(model, calib)
    before = (count_params(model), count_bytes(model))
    remove = parse_target(cfg.target, before[0])
    shape = layer_shape(model, spec)
    layers = spec.decoder_layers(model)
    n_channels, n_groups = plan(shape, len(layers), remove, cfg)
    new_sizes = {spec.intermediate_attr: shape.channels - n_channels}
    if n_groups:
        new_sizes[spec.heads_attr] = shape.heads - n_groups * shape.group
        if spec.kv_heads_attr:
            new_sizes[spec.kv_heads_attr] = shape.kv_heads - n_groups
        new_sizes[spec.head_dim_attr] = shape.head_dim  # no longer hidden / heads
    config, trial = model.config, copy.deepcopy(model.config)
    for name, value in new_sizes.items():
        setattr(trial, name, value)
    check_config(trial, f"width pruning to {new_sizes}", "; use prune='mlp'" if n_groups else "")
    sizes = layer_sizes(model, spec)
    chosen = score_and_mask(model, spec, shape, calib, n_channels, n_groups, cfg.batch_size,
                            cfg.calib_dtype)
    states = [sliced_state(spec, shape, layer, c) for layer, c in zip(layers, chosen)]
    for name, value in new_sizes.items():
        setattr(config, name, value)
    for i, (layer, state) in enumerate(zip(layers, states)):
        layers[i] = rebuild_layer(model, layer, i, state)
    after = layer_sizes(model, spec)
    report = {"kind": "width", "prune": cfg.prune, "target": cfg.target, "params_to_remove": remove,
              "removed_channels_per_layer": n_channels, "removed_kv_groups_per_layer": n_groups,
              "removed_heads_per_layer": n_groups * shape.group, "config": new_sizes,
              "layers": [{"index": i, "params_before": b["params"], "params_after": a["params"],
                          "bytes_before": b["bytes"], "bytes_after": a["bytes"], **c}
                         for i, (b, a, c) in enumerate(zip(sizes, after, chosen))]}
    report.update(totals(before, model))
    if record:  # False when a caller (e.g. compress.api.prune) records the step itself
        record_step(model, "width", cfg, {"config_sizes": new_sizes,
                                          **{k: report[k] for k in ("params_before", "params_after")}})
    return report
