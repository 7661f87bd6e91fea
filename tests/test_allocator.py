"""slmkit.allocator: pinning glibc's mmap threshold gives freed tensor memory back to the OS."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from slmkit.allocator import pin_mmap_threshold
from slmkit.errors import SlmkitError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# In a fresh process: free one 16 MB tensor (glibc then raises its mmap threshold to 16 MB), make
# 200 tensors of 2 MB, keep the newest (it sits on the heap's top, so the heap cannot shrink) and
# free the rest; print how many MB of resident memory the frees gave back.
SCRIPT = """
import sys, torch
from slmkit.eval.memory import current_rss_bytes
if sys.argv[1] == "pin":
    from slmkit.allocator import pin_mmap_threshold
    assert pin_mmap_threshold()
big = torch.ones(16 * 2 ** 20, dtype=torch.uint8)
del big
blocks = [torch.ones(2 * 2 ** 20, dtype=torch.uint8) for _ in range(200)]
newest = blocks[-1]
before = current_rss_bytes()
del blocks
print((before - current_rss_bytes()) / 2 ** 20)
"""


def released_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the mmap threshold is glibc's")
def test_pinned_threshold_returns_freed_tensors_to_the_os():
    dynamic, pinned = released_mb("dynamic"), released_mb("pin")
    assert pinned > 350, pinned            # 398 MB freed, nearly all of it given back
    assert pinned - dynamic > 250, (dynamic, pinned)   # glibc's raised threshold kept it resident


def test_bad_threshold_is_refused():
    for bad in (0, -1, 64 * 2 ** 20, 1.5):
        with pytest.raises(SlmkitError, match="mmap threshold"):
            pin_mmap_threshold(bad)


TRAIN = """
import sys, torch
from slmkit.allocator import pinned_threshold
from slmkit.models.tiny import tiny_model
from slmkit.train import Batches, CausalLM, TrainConfig, train
ids = torch.randint(3, 200, (4, 24), generator=torch.Generator().manual_seed(0))
cfg = TrainConfig(steps=2, batch_size=2, lr=1e-3, pin_mmap_threshold=sys.argv[1] == "pin")
loss = train(tiny_model("llama", seed=2), CausalLM(), Batches(ids), cfg)["final_loss"]
print(pinned_threshold(), loss)
"""


@pytest.mark.skipif(not GLIBC, reason="the mmap threshold is glibc's")
def test_train_pins_the_threshold_when_asked_and_trains_the_same():
    runs = {}
    for mode in ("dynamic", "pin"):
        out = subprocess.run([sys.executable, "-c", TRAIN, mode], capture_output=True, text=True, check=True)
        threshold, loss = out.stdout.split()[-2:]
        runs[mode] = threshold, float(loss)
    assert runs["dynamic"][0] == "None" and runs["pin"][0] == str(128 * 1024)
    assert runs["pin"][1] == runs["dynamic"][1]
