"""Which tools load a saved output: `where_it_loads(path)` -> tool -> "yes ..." or why not.

Read from the files alone (config.json, the safetensors tensor names, a GGUF's header), and only
what slmkit's tests check or a peer's tracker documents:

- a GGUF file: llama.cpp, and transformers' GGUF loader (it dequantizes every tensor to float);
- a standard folder: transformers, vLLM, and llama.cpp after `slmkit export gguf`;
- a compressed-tensors folder: transformers (with the `compressed-tensors` package) and vLLM read
  symmetric integer weights; asymmetric zero points fail to load in transformers with
  compressed-tensors 0.20 (its model building expects them unpacked; vllm-project/llm-compressor#1618);
  quantized embedding tables and GGUF's Q4_K / Q5_K mins (`weight_offset`) have no
  compressed-tensors form there. slmkit loads all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.runtime.checkpoint import OFFSET_FORMAT

YES = "yes"
VLLM_UNCHECKED = "expected (a compressed-tensors checkpoint of integer weights); vLLM is not run here"


def where_it_loads(path: str | Path) -> dict[str, str]:
    """tool ("slmkit", "llama.cpp", "transformers", "vLLM") -> "yes", "yes, ..." or why not."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise SlmkitError(f"{path} is neither a model folder nor a GGUF file")
        return {"slmkit": "yes (dequantized to float)", "llama.cpp": YES,
                "transformers": "yes (its GGUF loader dequantizes to float)",
                "vLLM": "not as GGUF here (vLLM's GGUF support is experimental)"}
    config_file = path / "config.json"
    if not config_file.exists():
        raise SlmkitError(f"{path}: no config.json; not a model folder")
    qc = json.loads(config_file.read_text()).get("quantization_config") or {}
    if not qc:
        return {"slmkit": YES, "llama.cpp": "after `slmkit export gguf`", "transformers": YES, "vLLM": YES}
    names = _tensor_names(path)
    why_not = []
    if any(n.endswith(".weight_offset") for n in names):
        why_not.append("GGUF's Q4_K/Q5_K mins (weight_offset) have no compressed-tensors form")
    if any(not g.get("weights", {}).get("symmetric", True) and g.get("format") != OFFSET_FORMAT
           for g in qc.get("config_groups", {}).values()):
        why_not.append("asymmetric zero points fail in compressed-tensors 0.20 (llm-compressor#1618)")
    embed = [t for g in qc.get("config_groups", {}).values() for t in g.get("targets", []) if "embed" in t]
    if embed:
        why_not.append("a quantized embedding table does not load there")
    out = {"slmkit": YES, "llama.cpp": "after `slmkit export gguf` (GGUF-grid linears unchanged)"}
    if why_not:
        reason = "no: " + "; ".join(why_not) + "; load with slmkit or use the GGUF"
        return {**out, "transformers": reason, "vLLM": reason}
    return {**out, "transformers": "yes (with the compressed-tensors package)", "vLLM": VLLM_UNCHECKED}


def _tensor_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    names: list[str] = []
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            names += list(st.keys())
    return names
