"""Save a model as a standard Hugging Face folder plus `slmkit.json`, atomically."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.models.manifest import MANIFEST_NAME, build_manifest

# keys the GGUF tokenizer path writes into tokenizer_config.json that only make sense at load time
_LOAD_TIME_TOKENIZER_KEYS = ("gguf_file", "local_files_only", "is_local")


def clear_gguf_markers(model) -> None:
    """A model dequantized from GGUF still says `quantization_config: gguf`; drop that so it saves
    (and reloads) as the plain dense checkpoint it is."""
    qc = getattr(model.config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if qc is not None and str(getattr(method, "value", method)).lower() == "gguf":
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False


def _clean_tokenizer_config(folder: Path) -> None:
    p = folder / "tokenizer_config.json"
    if not p.is_file():
        return
    data = json.loads(p.read_text(encoding="utf-8"))
    if any(k in data for k in _LOAD_TIME_TOKENIZER_KEYS):
        for k in _LOAD_TIME_TOKENIZER_KEYS:
            data.pop(k, None)
        p.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_output(out: str | Path, overwrite: bool = False) -> Path:
    """The resolved output folder, after checking it may be written: it does not exist (or is
    empty, or `overwrite`), and its parent can be created. Call it before long work."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise SlmkitError(f"output {out} already exists; choose another path or pass overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SlmkitError(f"cannot create the folder for output {out}: {e.strerror or e} "
                          f"({e.filename or out.parent}); choose another path") from None
    return out


def save(model, tokenizer, out: str | Path, manifest: dict | None = None, *,
         overwrite: bool = False) -> Path:
    """Write `model` and `tokenizer` to `out` as a standard HF folder with `slmkit.json`.

    The folder is written under a temporary name beside `out` and renamed when complete, so an
    interrupted or failed save never leaves a folder that looks finished. `manifest` entries
    (configs applied, metrics, ...) are merged into the base manifest."""
    out = check_output(out, overwrite)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    clear_gguf_markers(model)
    try:
        _save_weights(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            _clean_tokenizer_config(tmp)
        data = build_manifest(model, manifest)
        (tmp / MANIFEST_NAME).write_text(json.dumps(data, indent=2, default=str) + "\n")
        for f in tmp.iterdir():  # safetensors writes 0600; make the folder shareable
            if f.is_file():
                f.chmod(0o644)
        _replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_weights(model, folder: Path) -> None:
    """save_pretrained, except that integer-kernel linears go out in compressed-tensors form."""
    from slmkit.runtime.checkpoint import quantization_config, quantized_modules, quantized_state_dict

    if getattr(model, "_slmkit_quantized", None):
        raise SlmkitError("this model holds simulated quantized weights (quantize(..., "
                          "pack_weights=False)); pack them with slmkit.compress.pack before saving")
    if not quantized_modules(model):
        model.save_pretrained(folder)
        return
    model.config.quantization_config = quantization_config(model)
    try:
        model.save_pretrained(folder, state_dict=quantized_state_dict(model))
    finally:
        del model.config.quantization_config


def _replace(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError as e:
        if old is not None:
            os.rename(old, out)
        raise SlmkitError(f"could not move the finished model into {out}: {e}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
