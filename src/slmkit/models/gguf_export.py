"""Export a causal LM and its tokenizer as one GGUF file (llama.cpp's format), with `gguf`.

Written as llama.cpp's `convert_hf_to_gguf.py` (and `llama-quantize` for q4_0) writes it:
- `general.*`, the architecture's hyper-parameters under `<arch>.*`; every weight under llama.cpp's
  name (from gguf's `TensorNameMap`); no `output.weight` when the head is tied to the embedding;
- llama / mistral: q_proj and k_proj rows permuted (llama.cpp's `LlamaModel.permute`): llama.cpp
  rotates adjacent pairs where HF rotates halves; transformers' reader undoes it. qwen2, qwen3 and
  gemma3 use llama.cpp's NEOX rope: no permutation;
- gemma3: norms stored as 1 + weight (HF computes x * (1 + w); llama.cpp multiplies by w);
- the tokenizer (byte-level BPE only): model "gpt2", llama.cpp's pre-tokenizer name (it picks the
  split regex), tokens, token types, merges, special ids, add_bos / add_eos, chat template.

Calibrated tensors: a linear that slmkit quantized onto a GGUF block grid (`gguf_type` q8_0, q5_0,
q4_0, q6_k, q5_k or q4_k: `slmkit.runtime.ggml_blocks`) is written with its own integers and scales, whatever
`type` says, so llama.cpp computes exactly the weights slmkit calibrated (`general.file_type`
names the type that holds most weights; no metadata beyond llama.cpp's own keys). Any other
quantized linear is dequantized and re-quantized to `type`.

Tensor types (`type`) of the other tensors: 1-D tensors (norms, biases) stay f32, the rest are
f32 / f16 / bf16 as asked. q8_0 and q4_0 need rows of whole 32-element blocks: other tensors fall
back to f16 as in
llama.cpp (listed under the metadata key `slmkit.fallback_tensors`). With q4_0 the output head (or
the tied embedding) is q8_0 (llama-quantize uses Q6_K, which `gguf` cannot write, or Q8_0 where Q6_K
does not fit) and an untied `token_embd` is q4_0, as llama-quantize makes them.
"""

from __future__ import annotations

import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.errors import SlmkitError
from slmkit.models.arch import get_arch
from slmkit.models.default import default_gguf
from slmkit.models.gguf_tokenizer import write_tokenizer
from slmkit.runtime.ggml_blocks import BLOCK_TYPES, encode, gguf_type
from slmkit.runtime.qweight import QuantizedWeight

if TYPE_CHECKING:
    import torch

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
FALLBACK_KEY = "slmkit.fallback_tensors"
BLOCK = 32  # elements per Q8_0 / Q4_0 block: a row must be a whole number of blocks
_FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q5_0": 8, "q4_k": 15, "q5_k": 17, "q6_k": 18,
              "bf16": 32}  # gguf.LlamaFileType (K-quants: their _M mixes)


@dataclass(frozen=True)
class GGUFArch:
    """How one transformers `model_type` is written for llama.cpp."""

    gguf_arch: str            # general.architecture (llama.cpp's name)
    permute_qk: bool = False  # llama.cpp rotates adjacent pairs: permute q/k rows (llama family)
    norm_offset: float = 0.0  # added to every norm weight (gemma stores 1 + w)
    rope_dims: bool = False   # write <arch>.rope.dimension_count = head_dim (llama.cpp's LlamaModel)


GGUF_ARCHS: dict[str, GGUFArch] = {
    "llama": GGUFArch("llama", permute_qk=True, rope_dims=True),
    # llama.cpp writes mistral as llama; readers load it back as llama (see _check_config)
    "mistral": GGUFArch("llama", permute_qk=True, rope_dims=True),
    "qwen2": GGUFArch("qwen2"),
    "qwen3": GGUFArch("qwen3"),
    "gemma3_text": GGUFArch("gemma3", norm_offset=1.0),
}


def tensor_type(gguf_name: str, shape: tuple, type: str, has_output: bool) -> tuple[str, bool]:
    """(ggml type name, fell back to f16?) for a tensor of `shape` (torch order, rows first) in a
    file of `type`; `has_output`: the file has its own output.weight (an untied head)."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return "F32", False
    if type in ("f32", "f16", "bf16"):
        return type.upper(), False
    head = gguf_name == "output.weight" or (not has_output and gguf_name == "token_embd.weight")
    want = "Q4_0" if type == "q4_0" and not head else "Q8_0"
    return ("F16", True) if shape[-1] % BLOCK else (want, False)


def named_weights(model) -> dict[str, "torch.Tensor | QuantizedWeight"]:
    """HF parameter name -> tensor, where a slmkit quantized kernel module (one with a
    `dense_weight()` method) contributes the dense [out, in] weight instead of its packed buffers,
    or its `QuantizedWeight` when that lies on a GGUF block grid."""
    import torch

    out: dict[str, torch.Tensor | QuantizedWeight] = {}
    packed: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in packed):
            continue
        if callable(getattr(module, "dense_weight", None)):
            qw = module.quantized_weight() if callable(getattr(module, "quantized_weight", None)) else None
            on_grid = qw is not None and gguf_type(qw) is not None
            out[f"{name}.weight"] = qw if on_grid else module.dense_weight().detach()
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                out[f"{name}.bias"] = module.bias.detach()
            packed.append(name + ".")
            continue
        for pname, p in module.named_parameters(recurse=False):
            out[f"{name}.{pname}" if name else pname] = p.detach()
    return out


def permute_qk(w, n_head: int):
    """llama.cpp's `LlamaModel.permute`: within each head, rows (first half, second half) become
    interleaved pairs, so llama.cpp's adjacent-pair rope equals HF's rotate_half rope. A
    `QuantizedWeight` has its codes, scales and zero points permuted alike."""
    if isinstance(w, QuantizedWeight):
        offset = None if w.offset is None else permute_qk(w.offset, n_head)
        return QuantizedWeight(permute_qk(w.q, n_head), permute_qk(w.scale, n_head),
                               permute_qk(w.zero, n_head), w.g_idx, w.bits, w.group_size, w.act_bits, offset)
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _gguf_tensors(model, spec: GGUFArch) -> tuple[dict[str, "torch.Tensor"], bool]:
    """llama.cpp name -> float32 tensor ready to write, and whether output.weight is among them."""
    import gguf

    cfg, adapter = model.config, get_arch(model)
    head, embed = adapter.head(model), adapter.embedding(model)
    tied = (getattr(head, "dense_weight", None) is None
            and getattr(head, "weight", None) is getattr(embed, "weight", 0))
    head_prefix = next(n for n, m in model.named_modules() if m is head) + "."
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_id, cfg.num_hidden_layers)
    out, unknown = {}, []
    for hf_name, t in named_weights(model).items():
        if tied and hf_name.startswith(head_prefix):
            continue
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            unknown.append(hf_name)
            continue
        t = t if isinstance(t, QuantizedWeight) else t.float()
        if spec.permute_qk and ".attn_q." in name:
            t = permute_qk(t, cfg.num_attention_heads)
        elif spec.permute_qk and ".attn_k." in name:
            t = permute_qk(t, cfg.num_key_value_heads or cfg.num_attention_heads)
        out[name] = t + spec.norm_offset if name.endswith("norm.weight") else t
    if unknown:
        raise SlmkitError(f"{type(model).__name__}: no GGUF name for {len(unknown)} tensor(s) "
                          f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}); "
                          "a GGUF reader would not know these parts")
    return out, not tied


def _rope_theta(cfg) -> float:
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope = rope.get("full_attention", rope)  # gemma3: per layer type; the file states the global
    if rope.get("rope_type", "default") != "default":
        raise SlmkitError(f"rope scaling {rope['rope_type']!r} is not exported to GGUF yet")
    return float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def _check_config(cfg) -> None:
    """Refuse what no GGUF reader would load right; warn about what some reader ignores."""
    if cfg.model_type == "gemma3_text":  # both readers hard-code Gemma 3's released layout
        n = cfg.num_hidden_layers
        pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
        if list(getattr(cfg, "layer_types", None) or pattern) != pattern:
            raise SlmkitError("gemma3 GGUF readers assume every 6th layer is full attention; this "
                              f"model's layer_types {cfg.layer_types} would load wrong")
        local = (getattr(cfg, "rope_parameters", None) or {}).get("sliding_attention", {})
        if local and (local.get("rope_theta") != 10000.0
                      or local.get("rope_type", "default") != "default"):
            raise SlmkitError(f"gemma3 GGUF readers assume local rope base 10000, not {local}")
    window, kind = getattr(cfg, "sliding_window", None), cfg.model_type
    get = lambda key, default=None: getattr(cfg, key, default)  # noqa: E731
    for bad, note in [
        (kind == "mistral" and window and window < cfg.max_position_embeddings,
         f"mistral sliding_window={window}: GGUF readers attend to the full context"),
        (kind == "qwen2" and get("use_sliding_window"), "qwen2 use_sliding_window: GGUF readers "
         "attend to the full context"),
        (kind == "qwen3" and get("head_dim", 128) != 128, f"qwen3 head_dim={get('head_dim')}: "
         "llama.cpp reads it, transformers' GGUF reader assumes 128 and fails to load the file"),
        (kind in ("llama", "mistral") and (get("attention_bias") or get("mlp_bias")),
         "llama biases: llama.cpp reads them, transformers' GGUF reader drops them")]:
        if bad:
            warnings.warn(note, stacklevel=3)


def _write_hparams(w, cfg, spec: GGUFArch) -> None:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads or cfg.num_attention_heads)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    if spec.rope_dims:
        w.add_rope_dimension_count(head_dim)
    if spec.gguf_arch == "gemma3" and cfg.sliding_window:
        w.add_sliding_window(cfg.sliding_window)
    if spec.gguf_arch == "gemma3" and getattr(cfg, "final_logit_softcapping", None):
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)


def _source_pre(model) -> str | None:
    """The pre-tokenizer name of the GGUF this model was loaded from, if any: transformers' GGUF
    reader rebuilds some (e.g. "smollm") without their digit split, so their shape no longer says."""
    src = getattr(model, "_slmkit_source", None) or {}
    path = {"gguf": src.get("path"), "default": "default"}.get(src.get("kind"))
    try:
        if path == "default":
            path = default_gguf()
        return _read_header(Path(path))[0].get("tokenizer.ggml.pre") if path else None
    except (OSError, ValueError, KeyError, SlmkitError):
        return None


def _check_model(model) -> GGUFArch:
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type is None or not hasattr(model, "named_modules"):
        raise SlmkitError(f"GGUF export needs a transformers causal LM, got {type(model).__name__}")
    if model_type not in GGUF_ARCHS:
        raise SlmkitError(f"GGUF export does not support architecture {model_type!r}; supported: "
                          f"{', '.join(sorted(GGUF_ARCHS))}")
    if getattr(cfg, "is_encoder_decoder", False) or not hasattr(model, "lm_head"):
        raise SlmkitError(f"{type(model).__name__} is not a causal LM with an LM head; load it "
                          "with AutoModelForCausalLM")
    return GGUF_ARCHS[model_type]


def _target(path: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(path).expanduser().resolve()
    if out.is_dir():
        raise SlmkitError(f"output {out} is a folder; give a file name such as {out / 'model.gguf'}")
    if out.exists() and not overwrite:
        raise SlmkitError(f"output {out} already exists; choose another path or pass overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SlmkitError(f"cannot create the folder for output {out}: {e.strerror or e}") from None
    if not os.access(out.parent, os.W_OK):
        raise SlmkitError(f"cannot write to {out.parent} (permission denied); choose another path")
    return out


def export_gguf(model, tokenizer, path: str | os.PathLike, type: str = "f16", *,
                pre: str | None = None, overwrite: bool = False) -> Path:
    """Write `model` and `tokenizer` to the GGUF file `path` -> its absolute Path.

    `type`: f32, f16, bf16, q8_0 or q4_0 (the module docstring says which tensors keep more
    precision; `describe_gguf(path)["fallback_tensors"]` lists those that fell back to f16).
    `pre`: llama.cpp's pre-tokenizer name ("smollm", "qwen2", "llama-bpe", "gpt-2", ...) to use
    instead of the detected one. The file is written beside `path` under a temporary name and
    renamed when complete, so a failed export never leaves a file that looks finished."""
    import gguf

    if type not in GGUF_TYPES:
        raise SlmkitError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, not {type!r}")
    spec = _check_model(model)
    out = _target(path, overwrite)
    _check_config(model.config)
    tensors, has_output = _gguf_tensors(model, spec)

    w = gguf.GGUFWriter(None, spec.gguf_arch)
    w.add_type("model")
    name = Path(getattr(model.config, "_name_or_path", "") or "").name or "slmkit-export"
    # transformers reads a "llama" file named exactly "mistral" as mistral, then fails (gguf-py
    # has no such architecture): never write that exact name
    w.add_name(name if name != "mistral" else "mistral-model")
    _write_hparams(w, model.config, spec)
    write_tokenizer(w, tokenizer, model, pre or _source_pre(model))
    fallbacks, weights = [], {}
    for name, t in tensors.items():
        if isinstance(t, QuantizedWeight):
            key = gguf_type(t)
            w.add_tensor(name, encode(t), raw_dtype=gguf.GGMLQuantizationType[BLOCK_TYPES[key].name])
            weights[key] = weights.get(key, 0) + t.q.numel()
            continue
        qname, fell_back = tensor_type(name, tuple(t.shape), type, has_output)
        fallbacks += [name] if fell_back else []
        if qname != "F32":
            weights[qname.lower()] = weights.get(qname.lower(), 0) + t.numel()
        data, qt = t.contiguous().numpy(), gguf.GGMLQuantizationType[qname]
        w.add_tensor(name, data if qname == "F32" else gguf.quants.quantize(data, qt), raw_dtype=qt)
    most = max(weights, key=weights.get) if weights else type
    w.add_file_type(_FILE_TYPE.get(most, _FILE_TYPE[type]))
    if most.startswith("q"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if fallbacks:
        w.add_array(FALLBACK_KEY, fallbacks)

    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except OSError as e:
        raise SlmkitError(f"could not write {out}: {e.strerror or e}") from None
    finally:
        w.close()  # idempotent; closes the temporary file after an error
        tmp.unlink(missing_ok=True)
    return out


def _read_header(path: Path) -> tuple[dict, dict[str, str]]:
    """(metadata, tensor name -> ggml type name) of a GGUF file, without reading tensor data.
    transformers' header reader leaves big arrays (the vocabulary) as their length and takes
    milliseconds; gguf's GGUFReader parses every token (seconds) and is only the fallback."""
    import gguf

    try:
        from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata

        meta, _ = read_gguf_metadata(str(path), (FALLBACK_KEY,))
        return meta, {t.name: gguf.GGMLQuantizationType(t.ggml_type).name
                      for t in GgufHeader.from_file(str(path)).tensors}
    except (ImportError, AttributeError, ValueError):  # ValueError: a type it cannot read (Q5_0)
        r = gguf.GGUFReader(path)
        return ({k: f.contents() for k, f in r.fields.items()},
                {t.name: t.tensor_type.name for t in r.tensors})


def describe_gguf(path: str | os.PathLike) -> dict:
    """A GGUF file's summary: architecture, size in bytes, tensor name -> ggml type, tensors per
    type, the tensors that fell back to f16 (`slmkit.fallback_tensors`), the pre-tokenizer name."""
    from collections import Counter

    meta, types = _read_header(Path(path))
    return {"architecture": meta["general.architecture"], "bytes": Path(path).stat().st_size,
            "tensor_types": types, "type_counts": dict(Counter(types.values())),
            "fallback_tensors": list(meta.get(FALLBACK_KEY, [])),
            "pre_tokenizer": meta.get("tokenizer.ggml.pre")}
