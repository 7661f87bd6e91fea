"""Shared bits of the benchmark scripts: machine description, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    from slmkit.models.dtype import cpu_flags, describe_policy

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
    payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
               "versions": versions(), **payload}
    out = RESULTS / f"{topic}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(out)
    return out
