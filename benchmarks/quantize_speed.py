"""Speed of quantized models at batch 1: decode tok/s (128 new tokens) of the int4 checkpoint vs
the bf16 model, and prefill tok/s of W8A8 (SmoothQuant, int8 x int8 matmuls) and int4 vs bf16
and fp32. Quantization here is RTN (speed does not depend on how the grid was chosen).

int4 runs twice: on slmkit's native kernel (what `slmkit.models.load` picks where it builds) and
on PyTorch's `_weight_int4pack_mm_for_cpu` (SLMKIT_NATIVE=0), both with the rest of the model in
bf16 for decode and float32 for prefill (what `auto` picks on AVX2; on AMX CPUs bf16 for both).

    python benchmarks/quantize_speed.py [--model PATH] [--group-size 128] [--prompt 512]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg, write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="default")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens for prefill")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-w8a8", action="store_true")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from slmkit.compress.api import quantize
    from slmkit.compress.quantize.config import RTNConfig
    from slmkit.data import calibration_set, embedded_text
    from slmkit.eval.speed import SpeedConfig, speed
    from slmkit.models import load
    from slmkit.models.dtype import auto_dtype_name, resolve_dtype
    from slmkit.runtime import native

    base, tok = load(args.model, "float32")
    pre = auto_dtype_name("prefill")

    def auto(model):  # the decode dtype `auto` picks for this model (see slmkit.models.dtype)
        return model, pre, str(resolve_dtype("auto", "decode", model)).removeprefix("torch.")
    variants = {"fp32 dense": (base, "float32", "float32"), "bf16 dense": (base, "bfloat16", "bfloat16")}
    rtn4 = RTNConfig(bits=4, group_size=args.group_size, symmetric=True)
    print(native.status())
    if native.library() is not None:
        int4 = quantize(copy.deepcopy(base), rtn4)
        variants[f"int4 g{args.group_size}, slmkit native"] = auto(int4)
        other = "float32" if variants[f"int4 g{args.group_size}, slmkit native"][2] != "float32" else "bfloat16"
        variants[f"int4 g{args.group_size}, slmkit native, {other} decode"] = (int4, pre, other)
        head8 = RTNConfig(bits=4, group_size=args.group_size, symmetric=True, head_bits=8)
        variants[f"int4 g{args.group_size} + int8 lm_head, slmkit native"] = auto(
            quantize(copy.deepcopy(base), head8))
    os.environ["SLMKIT_NATIVE"] = "0"
    native.library.cache_clear()
    variants[f"int4 g{args.group_size}, torch int4pack"] = auto(quantize(copy.deepcopy(base), rtn4))
    del os.environ["SLMKIT_NATIVE"]
    native.library.cache_clear()
    if not args.no_w8a8:
        from slmkit.compress.quantize.smoothquant import SmoothQuantConfig

        calib = calibration_set(tok, embedded_text("calib"), 16, 256, seed=0)
        w8a8 = quantize(copy.deepcopy(base), SmoothQuantConfig(), calib)
        variants["W8A8 (fp32 rest)"] = (w8a8, "float32", "float32")
    rows = {}
    for name, (model, prefill_dtype, decode_dtype) in variants.items():
        cfg = SpeedConfig(prompt_tokens=args.prompt, new_tokens=args.new_tokens, repeats=args.repeats,
                          prefill_dtype=prefill_dtype, decode_dtype=decode_dtype)
        rows[name] = speed(model, tok, cfg)
        print(name, {k: rows[name][k] for k in ("prefill_tok_s", "decode_tok_s")}, flush=True)

    table = Table(title=f"{args.model}: batch 1, prompt {args.prompt}, {args.new_tokens} new tokens")
    for c in ("model", "dtypes (prefill/decode)", "prefill tok/s", "vs bf16", "decode tok/s", "vs bf16"):
        table.add_column(c, justify="left" if c == "model" else "right")
    ref = rows["bf16 dense"]
    for name, r in rows.items():
        _, p, d = variants[name]
        table.add_row(name, f"{p}/{d}", f"{r['prefill_tok_s']:.1f}", f"{r['prefill_tok_s'] / ref['prefill_tok_s']:.2f}x",
                      f"{r['decode_tok_s']:.1f}", f"{r['decode_tok_s'] / ref['decode_tok_s']:.2f}x")
    Console(width=140).print(table)
    dtypes = {name: v[1:] for name, v in variants.items()}
    out = write_result('quantize_speed' + args.tag, {'args': vars(args), 'native': native.status(),
                                                      'dtypes': dtypes, 'rows': rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
