"""Which compute dtype is faster for each phase on this CPU? (the evidence behind dtype="auto")

Times prefill (one forward over a prompt) and decode (greedy, KV cache) for float32 and bfloat16,
side by side in one run, and prints the ratios with what `auto` picks here.

    python benchmarks/dtype_phase.py [--model default] [--prompt 512] [--new 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg, write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="default")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from slmkit.eval.speed import SpeedConfig, speed
    from slmkit.models import load
    from slmkit.models.dtype import describe_policy

    model, tok = load(args.model, "float32")
    rows = {}
    for dtype in ("float32", "bfloat16"):
        cfg = SpeedConfig(prompt_tokens=args.prompt, new_tokens=args.new, repeats=args.repeats,
                          prefill_dtype=dtype, decode_dtype=dtype)
        rows[dtype] = speed(model, tok, cfg)
    policy = describe_policy()
    ratio_prefill = rows["bfloat16"]["prefill_tok_s"] / rows["float32"]["prefill_tok_s"]
    ratio_decode = rows["bfloat16"]["decode_tok_s"] / rows["float32"]["decode_tok_s"]
    table = Table(title=f"{args.model}: float32 vs bfloat16 by phase")
    for col in ("phase", "float32 tok/s", "bfloat16 tok/s", "bf16 / fp32", "auto picks"):
        table.add_column(col, justify="right")
    table.add_row(f"prefill ({args.prompt} tok)", f"{rows['float32']['prefill_tok_s']:.1f}",
                  f"{rows['bfloat16']['prefill_tok_s']:.1f}", f"{ratio_prefill:.2f}x", policy["prefill"])
    table.add_row(f"decode ({args.new} tok)", f"{rows['float32']['decode_tok_s']:.1f}",
                  f"{rows['bfloat16']['decode_tok_s']:.1f}", f"{ratio_decode:.2f}x", policy["decode"])
    Console(width=120).print(table)
    fastest = {"prefill": "bfloat16" if ratio_prefill > 1 else "float32",
               "decode": "bfloat16" if ratio_decode > 1 else "float32"}
    agrees = fastest == {"prefill": policy["prefill"], "decode": policy["decode"]}
    print(f"auto picks the faster dtype for both phases here: {agrees}")
    print(f"wrote {write_result('dtype_phase', {'model': args.model, 'runs': rows, 'bf16_over_fp32': {'prefill': ratio_prefill, 'decode': ratio_decode}, 'auto': policy, 'auto_agrees_with_measurement': agrees})}")
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
