"""Shared bits of the benchmark scripts: machine description, timing, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
FETCH_MODELS = "python ../shared/models/get_models.py --out models all"


def model_arg(value: str) -> str:
    """A model option (argparse type): "default" (the embedded SmolLM2), a hub id or a local folder.
    A folder under a `models/` directory that does not exist stops the run, naming the command that
    fetches it."""
    path = Path(value)
    if "models" in path.parts[:-1] and not path.exists():
        raise SystemExit(f"{value}: no such folder; from the clone's root, fetch the models with "
                         f"`{FETCH_MODELS}` (benchmarks/README.md)")
    return value


def machine() -> dict:
    from slmkit.models.dtype import describe_policy
    from slmkit.runtime.cpu import cpu_flags

    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    flags = cpu_flags()
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "avx512": "avx512f" in flags, "amx": "amx_tile" in flags,
            "auto_dtype": describe_policy(), "python": platform.python_version()}


@contextmanager
def timed(store: dict, key: str):
    t = time.perf_counter()
    yield
    store[key] = time.perf_counter() - t


def write_result(topic: str, payload: dict) -> Path:
    from slmkit.models.manifest import versions

    RESULTS.mkdir(parents=True, exist_ok=True)
    argv = [Path(sys.executable).name, *sys.argv]
    payload = {"command": shlex.join(argv), "argv": argv, "date": datetime.date.today().isoformat(),
               "machine": machine(), "versions": versions(), **payload}
    out = RESULTS / f"{topic}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(out)
    return out


# ---- shared by the compression benchmarks ------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
AUSTEN = ROOT.parent / "shared" / "data" / "austen_emma.txt"
PEER_PY = ROOT / ".venv-peers" / "llmc" / "bin" / "python"


def leading_tokens(tok, data, n: int):
    """The first `n` tokens of a text source as one document (0 = all of it)."""
    from slmkit.data import TextData, token_stream

    if not n:
        return data
    ids = token_stream(tok, data)[:n]
    return TextData(f"{data.name}[:{n} tokens]", [tok.decode(ids)])


def eval_texts(tok, n: int) -> dict:
    """In domain (the embedded eval text) and out of domain (Austen's Emma), `n` tokens each."""
    from slmkit.data import embedded_text, text_files

    return {"in": leading_tokens(tok, embedded_text("eval"), n),
            "out": leading_tokens(tok, text_files(AUSTEN), n)}


def run_llmc(method: str, model_dir: Path, calib, work: Path, extra: list[str]) -> tuple[Path, dict]:
    """llm-compressor (own venv, benchmarks/peers/setup.sh llmc) on exactly our calibration ids."""
    import subprocess

    import torch

    if not PEER_PY.exists():
        raise SystemExit(f"peer venv missing: run benchmarks/peers/setup.sh llmc ({PEER_PY})")
    work.mkdir(parents=True, exist_ok=True)
    ids = work / "calib_ids.pt"
    torch.save(calib, ids)
    out = work / f"peer_{method}"
    cmd = [str(PEER_PY), str(ROOT / "benchmarks" / "peers" / "llmc_run.py"), "--model", str(model_dir),
           "--calib", str(ids), "--method", method, "--out", str(out), *extra]
    print("peer:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out, json.loads((out / "peer.json").read_text())


def ppl_function(tok, texts: dict, window: int):
    """model -> {text key: protocol (i) token perplexity} over `texts`."""
    from slmkit.eval.perplexity import PerplexityConfig, window_perplexity

    cfg = PerplexityConfig(protocols=["window"], window=window)
    return lambda model: {k: window_perplexity(model, tok, t, cfg)["token_perplexity"]
                          for k, t in texts.items()}
