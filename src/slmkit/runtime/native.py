"""slmkit's own int4 CPU kernel (int4_native.c), compiled on first use.

Why: on AVX2-only CPUs PyTorch's `_weight_int4pack_mm_for_cpu` decodes only 1.1-1.3x faster than
a dense bf16 matmul (benchmarks/int_kernels.py), far from what reading a quarter of the bytes
allows. The C kernel multiplies the compressed-tensors nibbles directly with 16-bit integer
multiply-adds (activations quantized per 32 columns to int16, 2^-16 relative error; see the C
file) and is used for decode-sized inputs; prefill dequantizes to float32 and calls BLAS.

It is built with the system C compiler (`$CC`, else `cc`) into the slmkit cache
(`$SLMKIT_CACHE/native`, default ~/.cache/slmkit/native), keyed by a hash of the source and flags,
written to a temporary name and renamed, so concurrent first uses are safe. Nothing is required:
without a compiler, without AVX2/FMA, or with SLMKIT_NATIVE=0, `library()` returns None and
`Int4Linear` uses PyTorch's kernel. `status()` says which and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from slmkit.runtime.cpu import cpu_flags

SOURCE = Path(__file__).with_name("int4_native.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11"]

_why_not: str | None = None


def cache_dir() -> Path:
    root = os.environ.get("SLMKIT_CACHE") or Path.home() / ".cache" / "slmkit"
    return Path(root) / "native"


def _build(compiler: str) -> Path:
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    out = cache_dir() / f"int4_native-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp, "-lm"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise OSError(f"{compiler} failed: {r.stderr.strip()[:500]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (see `status()`)."""
    global _why_not
    if os.environ.get("SLMKIT_NATIVE", "1") == "0":
        _why_not = "disabled by SLMKIT_NATIVE=0"
        return None
    missing = {"avx2", "fma"} - cpu_flags()
    if missing:
        _why_not = f"CPU lacks {', '.join(sorted(missing))}"
        return None
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        _why_not = f"no C compiler ({compiler!r} not on PATH; set $CC)"
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        _why_not = f"build failed: {e}"
        return None
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.int4_gemv.argtypes = [p, i64, i64, p, p, p, i64, i64, p]
    lib.int4_dequant.argtypes = [p, p, p, i64, i64, i64, p]
    lib.int8_gemv.argtypes = [p, i64, i64, p, p, p, i64, p]
    lib.dense_gemm.argtypes = [p, i64, i64, p, ctypes.c_int, i64, p]
    lib.int4_gemv.restype = lib.int4_dequant.restype = lib.int8_gemv.restype = ctypes.c_int
    lib.dense_gemm.restype = ctypes.c_int
    return lib


def status() -> str:
    """'native int4 kernel: <path>' or why PyTorch's kernel is used instead."""
    lib = library()
    return f"native int4 kernel: {lib._name}" if lib is not None else f"no native int4 kernel: {_why_not}"


def supports(in_features: int, group_size: int) -> bool:
    return in_features % 32 == 0 and group_size % 32 == 0 and in_features % group_size == 0
