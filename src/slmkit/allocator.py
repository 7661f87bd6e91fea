"""The memory allocator of training commands: jemalloc where it is installed.

Training frees and reallocates a step's activations and gradients (a few MB each) every step.
glibc's malloc raises its mmap threshold after the first large free, and from then on serves
those blocks from its heap and keeps the freed pages resident: about 1 GB more peak memory for a
SmolLM2-135M full fine-tune than the step needs. jemalloc returns it (4.70 GB instead of 5.78 GB
peak, at 0.91x-1.0x the speed; benchmarks/history/training-throughput.md).
On a machine that trains models of 1B+ parameters in 24 GB, memory is the binding limit, so
training commands take jemalloc by default.

The allocator of a running process cannot be swapped, so the `slmkit` command re-executes itself
once, with jemalloc in `LD_PRELOAD`, for the commands that train (`TRAINING_COMMANDS`), as
PyTorch's own CPU launcher (`python -m torch.backends.xeon.run_cpu`) preloads jemalloc or
tcmalloc. `SLMKIT_ALLOCATOR` chooses: `auto` (default: jemalloc if installed, else the system
allocator, silently), `jemalloc` (required: an error says how to install it) or `system` (never
re-execute). Library users start their own process the same way:
`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python train.py` (Debian/Ubuntu:
`apt-get install libjemalloc2`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from slmkit.errors import SlmkitError

ENV = "SLMKIT_ALLOCATOR"
TRAINING_COMMANDS = ("finetune", "distill", "shrink")
_REEXECUTED = "SLMKIT_ALLOCATOR_REEXEC"      # set in the re-executed process: never loop
_LIBRARY = "libjemalloc.so.2"
_FOLDERS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
            "/usr/local/lib")


def find_jemalloc() -> str | None:
    """Path of jemalloc's shared library, or None."""
    for folder in _FOLDERS:
        path = Path(folder) / _LIBRARY
        if path.exists():
            return str(path)
    return None


def active_allocator() -> str:
    """'jemalloc' when this process has jemalloc loaded (LD_PRELOAD or linked), else 'system'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "jemalloc" if "libjemalloc" in maps else "system"


def training_env(command: str, environ: dict | None = None) -> dict | None:
    """The environment to re-execute `slmkit <command>` in, or None to run in this process."""
    environ = dict(os.environ if environ is None else environ)
    choice = environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "jemalloc", "system"):
        raise SlmkitError(f"{ENV}={environ[ENV]!r}: choose auto, jemalloc or system")
    if (choice == "system" or command not in TRAINING_COMMANDS or environ.get(_REEXECUTED)
            or not sys.platform.startswith("linux") or "libjemalloc" in environ.get("LD_PRELOAD", "")):
        return None
    library = find_jemalloc()
    if library is None:
        if choice == "jemalloc":
            raise SlmkitError(f"{ENV}=jemalloc but {_LIBRARY} was not found in {', '.join(_FOLDERS)}: "
                              f"install it (Debian/Ubuntu: apt-get install libjemalloc2) or set {ENV}=auto")
        return None
    preload = " ".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    return {**environ, "LD_PRELOAD": preload, _REEXECUTED: "1"}


def reexec_for(command: str, argv: list[str]) -> None:
    """Replace this process by `python -m slmkit.cli.main argv` under jemalloc when
    `training_env` says so; return (and run here) otherwise."""
    env = training_env(command)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "slmkit.cli.main", *argv], env)
