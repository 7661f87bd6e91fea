"""Memory and size: peak resident memory while a block runs, parameter count, bytes on disk."""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

from slmkit.models.manifest import WEIGHT_SUFFIXES
from slmkit.runtime.kernels import QuantLinear


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return max_rss_bytes()


def max_rss_bytes() -> int:
    """The process's high-water mark of resident memory since it started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakRSS:
    """`with PeakRSS() as p: ...; p.peak_bytes` — samples RSS every `interval` seconds.
    `p.start_bytes` is the RSS on entry; `p.added_bytes` (peak - start) is what the block added."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak_bytes = 0
        self.start_bytes = 0
        self._stop = threading.Event()

    @property
    def added_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak_bytes = self.start_bytes = current_rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())


def param_count(model) -> int:
    """Parameters, counting each integer-quantized weight as its out x in entries (those are
    held as packed codes, not nn.Parameters)."""
    quantized = sum(m.out_features * m.in_features for m in model.modules() if isinstance(m, QuantLinear))
    return sum(p.numel() for p in model.parameters()) + quantized


def disk_bytes(model) -> int | None:
    """Bytes of the weight files the model was loaded from (None for in-memory models)."""
    path = (getattr(model, "_slmkit_source", None) or {}).get("path")
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
