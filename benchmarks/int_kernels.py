"""Per-layer speed of the integer kernels against dense matmuls, at decode (1 token) and prefill
(512 tokens) shapes of Qwen2.5-0.5B's MLP (896 <-> 4864) and attention output (896 x 896):
dense fp32/bf16, int4 (tinygemm), int8 weight-only, W8A8 through each available int8 path.

Ratios only mean something within one run on a quiet machine.

    python benchmarks/int_kernels.py [--reps 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import write_result  # noqa: E402

SHAPES = [(4864, 896), (896, 4864), (896, 896)]  # (out, in)


def bench(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):  # best of 3 blocks of `reps` calls, in ms per call
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps * 1e3)
    return best


def fbgemm_linear(lin):
    """PyTorch's x86 dynamic int8 linear (fbgemm) on the same int8 weights, reduce_range=True
    (7-bit activations; needed on AVX2, whose 16-bit intermediate sums saturate otherwise)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wq = torch._make_per_channel_quantized_tensor(
            lin.weight_int8, lin._s32.double(), torch.zeros(lin.out_features, dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(wq, None)
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from slmkit.runtime import native
    from slmkit.runtime.kernels import make_linear
    from slmkit.runtime.qweight import rtn

    def torch_int4(qw):  # PyTorch's int4 kernel, as used where the native one does not build
        os.environ["SLMKIT_NATIVE"] = "0"
        native.library.cache_clear()
        try:
            return make_linear(qw, None)
        finally:
            del os.environ["SLMKIT_NATIVE"]
            native.library.cache_clear()

    print(native.status())

    torch.manual_seed(0)
    rows = []
    for out, k in SHAPES:
        w = torch.randn(out, k) * 0.02
        int4 = torch_int4(rtn(w, 4, 128, True))
        int4n = make_linear(rtn(w, 4, 128, True), None)
        int8 = make_linear(rtn(w, 8, None, True), None)
        w8 = rtn(w, 8, None, True)
        w8.act_bits = 8
        w8a8_pack, w8a8_mm = make_linear(w8, None), make_linear(w8, None)
        w8a8_pack.use_int_mm, w8a8_mm.use_int_mm = False, True
        fbgemm = fbgemm_linear(w8a8_pack)
        for m in (1, 512):
            reps = args.reps if m == 1 else max(2, args.reps // 25)
            x32, x16 = torch.randn(m, k), torch.randn(m, k).bfloat16()
            w32, w16 = w.clone(), w.bfloat16()
            cases = {
                "dense fp32": lambda: torch.nn.functional.linear(x32, w32),
                "dense bf16": lambda: torch.nn.functional.linear(x16, w16),
                "int4 (bf16 act)": lambda: int4(x16),
                "int4 (fp32 act)": lambda: int4(x32),
                "int4 slmkit native (fp32 act)": lambda: int4n(x32),
                "int4 slmkit native (bf16 act)": lambda: int4n(x16),
                "int8 w-only (bf16 act)": lambda: int8(x16),
                "int8 w-only (fp32 act)": lambda: int8(x32),
                "W8A8 via int8pack (this CPU's path)": lambda: w8a8_pack(x32),
                "W8A8 torch._int_mm": lambda: w8a8_mm(x32),
                "fbgemm int8 dynamic (7-bit act)": lambda: fbgemm(x32),
            }
            row = {"out": out, "in": k, "tokens": m}
            for name, fn in cases.items():
                if m > 1 and name == "int4 (fp32 act)":
                    continue  # scalar fallback: seconds per call at 512 tokens
                row[name] = bench(fn, reps)
            rows.append(row)
            print(row, flush=True)

    names = [k for k in rows[0] if k not in ("out", "in", "tokens")]
    table = Table(title="ms per call (best of 3 blocks); ratio = dense bf16 / this")
    for c in ("out x in", "tokens", *names):
        table.add_column(c, justify="right")
    for r in rows:
        cells = [f"{r[n]:.3f} ({r['dense bf16'] / r[n]:.2f}x)" if n in r else "-" for n in names]
        table.add_row(f"{r['out']}x{r['in']}", str(r["tokens"]), *cells)
    Console(width=200).print(table)
    print(f"wrote {write_result('int_kernels', {'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
