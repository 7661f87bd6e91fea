"""`slmkit.json`: what produced a model folder (source and its hash, configs, metrics, versions)."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from slmkit import __version__

MANIFEST_NAME = "slmkit.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(path: str | Path) -> str | None:
    """sha256 of a weight file, or of a folder's weight files (names and contents, sorted)."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if not p.is_dir():
        return None
    files = sorted(f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file())
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(bytes.fromhex(file_sha256(f)))
    return h.hexdigest()


def versions() -> dict:
    import torch
    import transformers

    return {"slmkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def build_manifest(model, extra: dict | None = None) -> dict:
    """The base manifest for a model about to be saved, updated with `extra` (configs, metrics)."""
    source = dict(getattr(model, "_slmkit_source", None) or {"kind": "in-memory"})
    if "sha256" not in source and source.get("path"):
        source["sha256"] = weights_sha256(source["path"])
    manifest = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_type": getattr(model.config, "model_type", None),
        "class": type(model).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "source": source,
        "steps": list(getattr(model, "_slmkit_steps", [])),
        # factorized layers (slmkit.compress.lowrank): slmkit.models.load rebuilds them
        **({"lowrank": model._slmkit_lowrank} if getattr(model, "_slmkit_lowrank", None) else {}),
        "metrics": {},
        "versions": versions(),
    }
    extra = dict(extra or {})
    manifest["steps"] += extra.pop("steps", [])
    manifest.update(extra)
    return manifest


def read_manifest(folder: str | Path) -> dict | None:
    """The `slmkit.json` of a model folder as a dict, or None if it has none."""
    p = Path(folder) / MANIFEST_NAME
    return json.loads(p.read_text()) if p.is_file() else None
