"""Depth pruning: rank decoder layers, remove the least useful ones whole.

Rankings (lower score = removed first):
- block influence (ShortGPT, Men et al. 2024): BI_i = 1 - mean_t cos(x_i[t], x_{i+1}[t]), the
  angular change a layer makes to the hidden state of each calibration token; a layer that barely
  turns the residual stream is close to the identity. Measured on the layer-sequential loop, one
  layer held at a time.
- ppl: the calibration loss (mean next-token cross-entropy) with layer i skipped, minus the dense
  loss; a one-shot ranking (each layer judged alone), n_layers + 1 forwards of the calibration set.

Removal cuts the ModuleList, the layer count and every per-layer config entry (`layer_types`;
qwen2's `max_window_layers` threshold is renumbered) and rebuilds each kept layer at its new index,
so its KV-cache slot and attention type match what `from_pretrained` will build.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

from slmkit.compress.calibrate import sequential
from slmkit.compress.prune.structured import (
    DepthPruneConfig,
    check_config,
    check_prunable,
    count_bytes,
    count_params,
    layer_sizes,
    parse_target,
    rebuild_layer,
    record_step,
    totals,
)
from slmkit.errors import SlmkitError
from slmkit.models.arch import ArchSpec, get_arch
from slmkit.progress import progress_bar

if TYPE_CHECKING:
    import torch
    from torch import nn


def _hidden(args: tuple, kwargs: dict) -> "torch.Tensor":
    return args[0] if args else kwargs["hidden_states"]


def block_influence(model: "nn.Module", calib: "torch.Tensor", batch_size: int = 8,
                    dtype: str = "float32") -> list[float]:
    """BI_i = 1 - mean cosine(layer input, layer output) over every calibration token."""
    import torch.nn.functional as F

    scores: list[float] = []

    def on_layer(index: int, layer: "nn.Module", run: Callable[[], None]) -> None:
        acc = [0.0, 0]  # sum of cosines, tokens

        def hook(module, args, kwargs, out):
            x = _hidden(args, kwargs).float()                       # [b, L, hidden]
            y = (out[0] if isinstance(out, tuple) else out).float()  # [b, L, hidden]
            cos = F.cosine_similarity(x, y, dim=-1)                  # [b, L]
            acc[0] += cos.sum().item()
            acc[1] += cos.numel()

        handle = layer.register_forward_hook(hook, with_kwargs=True)
        try:
            run()
        finally:
            handle.remove()
        scores.append(1.0 - acc[0] / acc[1])

    sequential(model, calib, on_layer, batch_size=batch_size, description="block influence", dtype=dtype)
    return scores


def skip_layer(layer: "nn.Module"):
    """A hook handle making `layer` return its input (as if removed); `.remove()` undoes it."""
    def identity(module, args, kwargs, out):
        x = _hidden(args, kwargs)
        return (x, *out[1:]) if isinstance(out, tuple) else x
    return layer.register_forward_hook(identity, with_kwargs=True)


def calibration_loss(model: "nn.Module", calib: "torch.Tensor", batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over the calibration ids [n, length]."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids in calib.split(batch_size):
            ids = ids.to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # [b, L-1, V]
            total += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
            count += ids[:, 1:].numel()
    return total / count


def skip_losses(model: "nn.Module", calib: "torch.Tensor", batch_size: int = 8) -> tuple[float, list[float]]:
    """(dense loss, [loss with layer i skipped for each i])."""
    layers = get_arch(model).decoder_layers(model)
    base = calibration_loss(model, calib, batch_size)
    losses = []
    with progress_bar("layer-skip loss", len(layers), unit="layers") as advance:
        for layer in layers:
            handle = skip_layer(layer)
            try:
                losses.append(calibration_loss(model, calib, batch_size))
            finally:
                handle.remove()
            advance(1)
    return base, losses


def choose_layers(scores: list[float], params: list[int], remove: int) -> list[int]:
    """Lowest-score layers, the fewest whose parameters reach `remove` (never all of them)."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    chosen, removed = [], 0
    for i in order:
        if removed >= remove:
            break
        chosen.append(i)
        removed += params[i]
    if removed < remove or len(chosen) >= len(scores):
        raise SlmkitError(f"removing {remove:,} parameters takes every decoder layer; the most "
                          f"depth pruning can remove is {sum(params) - max(params):,} (one layer kept)")
    return sorted(chosen)


def _cut_config(config, spec: ArchSpec, n: int, keep: list[int]) -> None:
    """Make `config` describe only the layers `keep` of the `n` it had."""
    for name in spec.per_layer_config:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise SlmkitError(f"config.{name} has {len(value)} entries for {n} layers")
            setattr(config, name, [value[i] for i in keep])
    for name in spec.layer_index_config:
        value = getattr(config, name, None)
        if isinstance(value, int) and value < n:  # layers from index `value` on are special
            setattr(config, name, sum(1 for i in keep if i < value))
    setattr(config, spec.n_layers_attr, len(keep))


def drop_layers(model: "nn.Module", spec: ArchSpec, remove: list[int]) -> None:
    """Physically remove decoder layers `remove` (indices) and cut the config to match."""
    from torch import nn

    layers = spec.decoder_layers(model)
    n = len(layers)
    keep = [i for i in range(n) if i not in set(remove)]
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise SlmkitError("this gpt2 config scales attention by 1/(layer index); renumbered layers "
                          "would change their function, so depth pruning cannot keep it exact")
    trial = copy.deepcopy(model.config)
    _cut_config(trial, spec, n, keep)
    check_config(trial, f"removing layers {remove}")
    _cut_config(model.config, spec, n, keep)
    new = [rebuild_layer(model, layers[i], j, layers[i].state_dict()) for j, i in enumerate(keep)]
    model.set_submodule(spec.layers, nn.ModuleList(new))


def prune_depth(model: "nn.Module", cfg: DepthPruneConfig, calib: "torch.Tensor", *,
                record: bool = True) -> dict:
    """Remove whole decoder layers in place until `cfg.target` is met; returns the report:
    {"removed_layers" (original indices), "layers": [per original layer: index, params, bytes,
    score (BI, or loss increase when skipped; lowest removed first), removed], "params_to_remove",
    totals: params_before/after, bytes_before/after, fraction_removed}. Records the step in `model._slmkit_steps`."""
    spec = check_prunable(model, calib)
    if cfg.ranking not in ("block_influence", "ppl"):
        raise SlmkitError(f"unknown depth ranking {cfg.ranking!r}; choose block_influence or ppl")
    before = (count_params(model), count_bytes(model))
    remove = parse_target(cfg.target, before[0])
    sizes = layer_sizes(model, spec)
    params = [s["params"] for s in sizes]
    choose_layers([0.0] * len(params), params, remove)  # fail on an unreachable target before work
    report: dict = {"kind": "depth", "ranking": cfg.ranking, "target": cfg.target,
                    "params_to_remove": remove}
    if cfg.ranking == "block_influence":
        scores = block_influence(model, calib, cfg.batch_size, cfg.calib_dtype)
    else:
        base, losses = skip_losses(model, calib, cfg.batch_size)
        scores = [loss - base for loss in losses]
        report["dense_loss"] = base
    chosen = choose_layers(scores, params, remove)
    drop_layers(model, spec, chosen)
    report["removed_layers"] = chosen
    report["layers"] = [{"index": i, **s, "score": scores[i], "removed": i in chosen}
                        for i, s in enumerate(sizes)]
    report.update(totals(before, model))
    if record:  # False when a caller (e.g. compress.api.prune) records the step itself
        record_step(model, "depth", cfg, {"removed_layers": chosen,
                                          **{k: report[k] for k in ("params_before", "params_after")}})
    return report
