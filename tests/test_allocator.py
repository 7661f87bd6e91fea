"""Training commands re-execute under jemalloc where it is installed (`slmkit.allocator`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmkit import allocator
from slmkit.allocator import ENV, find_jemalloc, training_env
from slmkit.errors import SlmkitError
from slmkit.models import read_manifest

JEMALLOC = find_jemalloc()
needs_jemalloc = pytest.mark.skipif(JEMALLOC is None or not sys.platform.startswith("linux"),
                                    reason="libjemalloc.so.2 not installed (apt-get install libjemalloc2)")


def test_only_training_commands_are_re_executed_and_never_twice():
    base = {"PATH": "/usr/bin"}
    assert training_env("quantize", base) is None
    assert training_env("finetune", {**base, ENV: "system"}) is None
    assert training_env("finetune", {**base, "SLMKIT_ALLOCATOR_REEXEC": "1"}) is None
    assert training_env("distill", {**base, "LD_PRELOAD": "/x/libjemalloc.so.2"}) is None
    with pytest.raises(SlmkitError, match="auto, jemalloc or system"):
        training_env("finetune", {**base, ENV: "tcmalloc"})


@needs_jemalloc
def test_the_environment_preloads_jemalloc_and_keeps_other_preloads():
    env = training_env("finetune", {"PATH": "/usr/bin", "LD_PRELOAD": "/opt/other.so"})
    assert env["LD_PRELOAD"].split() == [JEMALLOC, "/opt/other.so"]
    assert env["PATH"] == "/usr/bin" and env["SLMKIT_ALLOCATOR_REEXEC"] == "1"


def test_required_but_missing_jemalloc_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(allocator, "_FOLDERS", (str(tmp_path),))   # a system without it
    assert training_env("finetune", {}) is None                    # auto: the system allocator
    with pytest.raises(SlmkitError, match="apt-get install libjemalloc2"):
        training_env("finetune", {ENV: "jemalloc"})


def _finetune(tiny_dir, out: Path, **env) -> dict:
    cli = Path(sys.executable).with_name("slmkit")
    cmd = [str(cli), "finetune", str(tiny_dir("llama")), str(out), "--data", "default:calib",
           "--seq-len", "32", "--max-rows", "8", "--steps", "1", "--batch-size", "4"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    assert run.returncode == 0, run.stderr
    return read_manifest(out / "model")["steps"][-1]["summary"]


@needs_jemalloc
def test_the_slmkit_command_trains_under_jemalloc_unless_told_not_to(tiny_dir, tmp_path):
    assert _finetune(tiny_dir, tmp_path / "je")["allocator"] == "jemalloc"
    assert _finetune(tiny_dir, tmp_path / "sys", **{ENV: "system"})["allocator"] == "system"
