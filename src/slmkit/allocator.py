"""glibc's allocator and peak resident memory.

PyTorch's CPU tensors come from `malloc`. glibc serves a block above its mmap threshold with its own
`mmap`, which `free` hands back to the OS at once; smaller blocks come from the heap, whose freed
pages mostly stay resident. The threshold starts at 128 KB, but glibc raises it (up to 32 MB on
64-bit) every time a freed mmapped block was larger than it. A training step allocates and frees
gigabytes of activations and gradients of a few MB each, so after the first step they all land on
the heap and the process keeps about 1 GB more resident than it ever uses at once (SmolLM2-135M,
4 x 512 tokens, bf16 autocast: peak RSS 5.6 GB, 4.5 GB with the threshold pinned; see
benchmarks/RESULTS.md).

`pin_mmap_threshold()` sets the threshold explicitly, which also turns glibc's raising off, so large
blocks stay mmapped for the rest of the process. It is process-wide and cannot be undone (glibc has
no call that turns the dynamic threshold back on); on a C library other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from slmkit.errors import SlmkitError

M_MMAP_THRESHOLD = -3          # mallopt parameter number, from glibc's malloc.h
DEFAULT_THRESHOLD = 128 * 1024  # glibc's initial threshold

_pinned: int | None = None


def pin_mmap_threshold(nbytes: int = DEFAULT_THRESHOLD) -> bool:
    """Serve every block >= `nbytes` with its own mmap from now on; True if glibc took it.
    Idempotent; a second call with another size moves the threshold."""
    global _pinned
    if not isinstance(nbytes, int) or not 0 < nbytes <= 32 * 2 ** 20:
        raise SlmkitError(f"mmap threshold must be an int in (0, 32 MB], not {nbytes!r}")
    if _pinned == nbytes:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if libc.mallopt(M_MMAP_THRESHOLD, nbytes) != 1:
        return False
    _pinned = nbytes
    return True


def pinned_threshold() -> int | None:
    """The threshold `pin_mmap_threshold` set in this process, or None."""
    return _pinned
