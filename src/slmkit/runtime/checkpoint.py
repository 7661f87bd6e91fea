"""Quantized checkpoints in the compressed-tensors format (what llm-compressor writes; transformers
with the `compressed-tensors` package and vLLM read it), written and read without that package.

Per quantized linear or embedding table `NAME` (weight-only, "pack-quantized"):
  NAME.weight_packed      int32 [out, ceil(in * bits / 32)]   codes, see `pack.py`
  NAME.weight_scale       float32 [out, groups]               (groups = 1 per channel)
  NAME.weight_zero_point  int32 [ceil(out * bits / 32), groups]  packed along out; asymmetric only
  NAME.weight_shape       int64 [2]                           (out, in)
  NAME.weight_offset      float32 [out, groups]               GGUF's Q4_K / Q5_K grids: values are
                          code * scale - offset (slmkit's own tensor, in config groups of format
                          "slmkit-pack-quantized-offset", which other readers refuse)
W8A8 ("int-quantized"): NAME.weight int8 [out, in] (code - 128), NAME.weight_scale float32 [out, 1];
activations are quantized per token at run time (`input_activations.dynamic`).
`config.json` gets `quantization_config` with one config group per distinct scheme, each listing
the exact module names it covers. Scales stay float32: rounding them to bf16 would move the grid
the quantizer chose (cost: 4 bytes per group, ~6% of the 4-bit payload at group size 128).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.runtime.embedding import QuantEmbedding
from slmkit.runtime.kernels import QuantLinear, make_linear, warn_dense
from slmkit.runtime.pack import pack_int32, unpack_int32
from slmkit.runtime.qweight import QuantizedWeight

OFFSET_FORMAT = "slmkit-pack-quantized-offset"  # packed codes + float mins (weight_offset)
FORMAT_VERSION = "0.20.0"  # the compressed-tensors version whose reader the tests check against


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _scheme(m: QuantLinear) -> tuple:
    symmetric = m.offset is None and bool((m.zero == 2 ** (m.bits - 1)).all())
    return (m.bits, m.group_size, symmetric, m.act_bits, m.offset is not None)


def _scheme_dict(bits, group_size, symmetric, act_bits, offsets=False) -> dict:
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric,
               "strategy": "channel" if group_size is None else "group",
               "group_size": group_size, "dynamic": False, "actorder": None, "observer": "minmax",
               "block_structure": None, "observer_kwargs": {}}
    acts = None
    if act_bits:
        acts = {"num_bits": act_bits, "type": "int", "symmetric": True, "strategy": "token",
                "dynamic": True, "group_size": None, "actorder": None, "observer": None,
                "block_structure": None, "observer_kwargs": {}}
    fmt = "int-quantized" if act_bits else "pack-quantized"
    if offsets:   # GGUF's Q4_K / Q5_K mins: a format no other reader knows, so none loads it silently wrong
        fmt = OFFSET_FORMAT
    return {"weights": weights, "input_activations": acts, "output_activations": None,
            "format": fmt}


def quantization_config(model: nn.Module) -> dict:
    """The `quantization_config` entry for config.json describing every QuantLinear."""
    groups: dict[tuple, list[str]] = {}
    for name, m in quantized_modules(model).items():
        groups.setdefault(_scheme(m), []).append(name)
    config_groups = {f"group_{i}": {"targets": names, **_scheme_dict(*key)}
                     for i, (key, names) in enumerate(groups.items())}
    formats = {g["format"] for g in config_groups.values()}
    return {"quant_method": "compressed-tensors", "format": formats.pop() if len(formats) == 1
            else "mixed-precision", "quantization_status": "compressed",
            "config_groups": config_groups, "ignore": [], "kv_cache_scheme": None,
            "sparsity_config": {}, "transform_config": {}, "global_compression_ratio": None,
            "version": FORMAT_VERSION, "producer": "slmkit"}


def quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each QuantLinear in compressed-tensors form."""
    qmods = quantized_modules(model)
    sd = {k: v for k, v in model.state_dict().items()
          if not any(k.startswith(n + ".") for n in qmods)}
    for name, m in qmods.items():
        codes = m.codes()
        if m.bias is not None:
            sd[f"{name}.bias"] = m.bias.detach()
        sd[f"{name}.weight_scale"] = m.scale.clone()
        if m.act_bits:
            sd[f"{name}.weight"] = (codes.to(torch.int16) - 128).to(torch.int8)
            continue
        sd[f"{name}.weight_packed"] = pack_int32(codes, m.bits)
        sd[f"{name}.weight_shape"] = torch.tensor([m.out_features, m.in_features])
        if m.offset is not None:
            sd[f"{name}.weight_offset"] = m.offset.clone()
        elif not _scheme(m)[2]:
            sd[f"{name}.weight_zero_point"] = pack_int32(m.zero.to(torch.int64), m.bits, dim=0)
    return sd


# ---- reading ---------------------------------------------------------------------------------

def is_compressed_tensors(config: dict) -> bool:
    qc = config.get("quantization_config") or {}
    return qc.get("quant_method") == "compressed-tensors"


def _matches(name: str, module: nn.Module, targets: list[str]) -> bool:
    for t in targets:
        if t.startswith("re:"):
            if re.match(t[3:], name):
                return True
        elif t == name or t == type(module).__name__:
            return True
    return False


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SlmkitError(f"{folder}: no .safetensors weights next to config.json")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise SlmkitError(f"cannot read the weights file {f}: {e}; the file is damaged or "
                              "incomplete (re-copy or re-create it)") from None
    return out


def _quantized_weight(name: str, scheme: dict, t: dict[str, torch.Tensor]) -> QuantizedWeight:
    w = scheme["weights"]
    bits, group_size = w["num_bits"], w.get("group_size")
    if w.get("type", "int") != "int" or w.get("strategy") not in ("group", "channel"):
        raise SlmkitError(f"{name}: compressed-tensors scheme {w.get('type')}/{w.get('strategy')} "
                          "is not supported here (int weights, group or channel strategy are)")
    if w.get("actorder") not in (None, "weight", "static"):
        raise SlmkitError(f"{name}: actorder {w['actorder']!r} (a per-column group map) is not "
                          "supported")
    acts = scheme.get("input_activations")
    act_bits = None
    if acts:
        if not (acts.get("type") == "int" and acts.get("dynamic") and acts.get("strategy") == "token"):
            raise SlmkitError(f"{name}: only dynamic per-token int activations are supported")
        act_bits = acts["num_bits"]
    scale = t[f"{name}.weight_scale"].float()
    if f"{name}.weight_packed" in t:
        out, k = (int(v) for v in t[f"{name}.weight_shape"])
        q = unpack_int32(t[f"{name}.weight_packed"], bits, k)
    else:  # int-quantized: signed int8 stored directly
        signed = t[f"{name}.weight"]
        out, k = signed.shape
        q = (signed.to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8)
    if scale.ndim == 1:
        scale = scale[:, None]
    g = torch.arange(k) // (group_size or k)
    if f"{name}.weight_offset" in t:
        offset = t[f"{name}.weight_offset"].float()
        return QuantizedWeight(q, scale, offset / scale, g, bits, group_size, act_bits, offset)
    if w.get("symmetric", True):
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        zp = t[f"{name}.weight_zero_point"]
        zero = (unpack_int32(zp, bits, out, dim=0).float() if zp.dtype == torch.int32
                else zp.float().reshape(scale.shape) + 2 ** (bits - 1))
    return QuantizedWeight(q, scale, zero, g, bits, group_size, act_bits)


def load_compressed(folder: str | Path, dtype: torch.dtype):
    """Build the model of a compressed-tensors folder with slmkit's integer kernels -> model."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    qc = raw["quantization_config"]
    if qc.get("sparsity_config") or qc.get("transform_config"):
        raise SlmkitError(f"{folder}: compressed-tensors sparsity/transform configs are not "
                          "supported by slmkit's loader; load it with transformers instead")
    if qc.get("quantization_status", "compressed") != "compressed":
        raise SlmkitError(f"{folder}: quantization_status {qc.get('quantization_status')!r}; "
                          "only compressed checkpoints load here")
    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = _read_tensors(folder)
    ignore = qc.get("ignore") or []
    replaced: set[str] = set()
    dense: list[tuple[str, str]] = []
    for name, module in list(model.named_modules()):
        if not name or _matches(name, module, ignore):
            continue
        for scheme in qc["config_groups"].values():
            if _matches(name, module, scheme.get("targets", [])):
                if f"{name}.weight_scale" not in tensors:
                    break  # a target class with no quantized tensors (e.g. an untouched head)
                qw = _quantized_weight(name, scheme, tensors)
                if isinstance(module, nn.Embedding):
                    model.set_submodule(name, QuantEmbedding(qw, module))
                else:
                    model.set_submodule(name, make_linear(qw, tensors.get(f"{name}.bias"), name, dense))
                replaced.add(name)
                break
    warn_dense(dense, len(replaced))
    rest = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] not in replaced}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in replaced]
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise SlmkitError(f"{folder}: checkpoint does not match its config (missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]})")
    model.to(dtype)
    return model
