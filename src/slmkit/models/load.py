"""`load(source)`: a hub id, a local HF folder, a `.gguf` file, or "default" -> (model, tokenizer)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.errors import SlmkitError
from slmkit.models.arch import shared_input_sites
from slmkit.models.dtype import Phase, resolve_dtype
from slmkit.models.manifest import read_manifest
from slmkit.models.save import clear_gguf_markers

if TYPE_CHECKING:
    import torch

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_source(source: str | os.PathLike) -> tuple[str, str]:
    """Classify a source -> (kind, location), kind one of default, dir, gguf, hub."""
    s = os.fspath(source)
    if s == "default":
        from slmkit.models.default import default_model_dir

        return "default", str(default_model_dir())
    p = Path(s).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise SlmkitError(f"{p} is a file but not a .gguf; give a model folder, a .gguf file "
                              "or a hub id")
        return "gguf", str(p)
    if p.is_dir():
        if (p / "config.json").is_file():
            return "dir", str(p)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", str(ggufs[0])
        raise SlmkitError(f"folder {p} is not a Hugging Face model folder (no config.json)"
                          + (f" and holds {len(ggufs)} .gguf files; name one" if ggufs else ""))
    looks_like_path = s.startswith((".", "/", "~")) or s.endswith(".gguf") or s.count("/") > 1
    if looks_like_path or not _HUB_ID.match(s):
        raise SlmkitError(f"model path {s} does not exist (and it is not a hub id like org/name)")
    return "hub", s


def _from_pretrained(location: str, dtype: "torch.dtype", what: str, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(location, **kw)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kw)
    except SlmkitError:
        raise
    except ValueError as e:
        if "model type" in str(e) or "does not recognize this architecture" in str(e):
            raise SlmkitError(f"{what}: transformers does not know this architecture ({e}); "
                              "upgrade transformers or check config.json's model_type") from e
        raise SlmkitError(f"could not load {what}: {e}") from e
    except OSError as e:
        raise SlmkitError(f"could not load {what}: {e}") from e
    except Exception as e:  # corrupt weights surface as safetensors/struct/key errors
        raise SlmkitError(f"could not load {what}: {type(e).__name__}: {e}. The files may be "
                          "corrupt or truncated; re-download or re-save them") from e
    return model, tok


def load_gguf(path: str | Path, dtype: "torch.dtype"):
    """Load a .gguf file through transformers' dequantizing GGUF loader (dense weights)."""
    p = Path(path)
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SlmkitError(f"{p} is not a GGUF file (bad magic bytes)")
    model, tok = _from_pretrained(str(p.parent), dtype, f"GGUF file {p}", gguf_file=p.name)
    packed = getattr(getattr(model, "hf_quantizer", None), "packed_modules", None)
    if packed or any(not prm.dtype.is_floating_point for prm in model.parameters()):
        raise SlmkitError(f"{p}: transformers kept some weights packed; slmkit needs them "
                          "dequantized (try dtype=float32 or a newer transformers)")
    clear_gguf_markers(model)
    model.config._name_or_path = str(p)
    model._slmkit_source = {"kind": "gguf", "source": str(p), "path": str(p)}
    return model, tok


def _lowrank_records(folder: str) -> list[dict]:
    return (read_manifest(folder) or {}).get("lowrank") or []


def _load_lowrank(folder: str, dtype: "torch.dtype", records: list[dict]):
    """A folder saved after slmkit.compress.lowrank: the config's model with the factorized
    layers rebuilt as LowRankLinear (two small linears each), then the weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    from slmkit.runtime.lowrank import rebuild_lowrank

    try:
        config = AutoConfig.from_pretrained(folder)
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        rebuild_lowrank(model, records)
        tensors: dict = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            tensors.update(load_file(str(f)))
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if getattr(config.get_text_config(), "tie_word_embeddings", False):
            model.tie_weights()
            missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise SlmkitError(f"{folder}: weights do not match the low-rank layers slmkit.json "
                              f"lists (missing {missing[:5]}, unexpected {unexpected[:5]})")
        tok = AutoTokenizer.from_pretrained(folder)
    except SlmkitError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise SlmkitError(f"could not load low-rank model folder {folder}: {type(e).__name__}: {e}") from e
    model.to(dtype)
    model._slmkit_lowrank = list(records)
    return model, tok


def _is_compressed(folder: str) -> bool:
    import json

    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SlmkitError(f"cannot read {folder}/config.json: {e}") from None
    qc = config.get("quantization_config") or {}
    return qc.get("quant_method") == "compressed-tensors"


def _load_compressed(folder: str, dtype: "torch.dtype"):
    """A compressed-tensors checkpoint (ours or llm-compressor's) on slmkit's integer kernels."""
    from transformers import AutoTokenizer

    from slmkit.runtime.checkpoint import load_compressed
    from slmkit.runtime.fuse import fuse_shared_inputs

    try:
        tok = AutoTokenizer.from_pretrained(folder)
        model = load_compressed(folder, dtype)
        fuse_shared_inputs(shared_input_sites(model))
    except SlmkitError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise SlmkitError(f"could not load quantized model folder {folder}: "
                          f"{type(e).__name__}: {e}") from e
    return model, tok


def load(source: str | os.PathLike = "default", dtype: "str | torch.dtype" = "auto", *,
         phase: Phase = "prefill"):
    """Load a causal LM and its tokenizer -> (model, tokenizer), in eval mode.

    `source`: "default" (the embedded SmolLM2-135M-Instruct), a local HF folder, a .gguf file, or
    a hub id (downloaded by transformers; offline it must already be in the HF cache).
    `dtype`: "auto" picks from the CPU's flags for `phase` (see `slmkit.models.dtype`); or
    float32 / bfloat16 / float16."""
    kind, location = resolve_source(source)
    torch_dtype = resolve_dtype(dtype, phase)
    if kind == "gguf":
        model, tok = load_gguf(location, torch_dtype)
    elif kind == "hub":
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        try:
            model, tok = _from_pretrained(location, torch_dtype, f"hub model {location!r}")
        except SlmkitError as e:
            hint = (" HF_HUB_OFFLINE is set, so only models already in the local HF cache load: "
                    "give a local folder or .gguf file instead" if offline else
                    " check the id and your network, or give a local folder or .gguf file")
            raise SlmkitError(f"{str(e).rstrip('.')}.{hint}") from e.__cause__
    elif _is_compressed(location):
        model, tok = _load_compressed(location, torch_dtype)
    elif _lowrank_records(location):
        model, tok = _load_lowrank(location, torch_dtype, _lowrank_records(location))
    else:
        model, tok = _from_pretrained(location, torch_dtype, f"model folder {location}")
    if str(dtype).lower() == "auto" and phase == "decode":
        # an integer-bound model decodes in float32 on AVX2 (slmkit.models.dtype.integer_bound);
        # only the model itself tells, so the dtype picked before loading is revised here
        want = resolve_dtype("auto", phase, model)
        if want != torch_dtype:
            model.to(want)
    model.eval()
    model._slmkit_source = {"kind": kind, "source": os.fspath(source),
                            "path": location if kind != "hub" else None}
    if kind == "hub":
        model._slmkit_source["revision"] = getattr(model.config, "_commit_hash", None)
    return model, tok
