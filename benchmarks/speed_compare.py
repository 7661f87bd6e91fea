"""Decode and prefill speed of several checkpoints, timed in alternation in one process.

The first model is the reference; every other one gets its ratio to it. Rounds go a, b, c, a, b,
c, ...; each round is one `slmkit.eval.speed` call (one warm-up, one timed run), and the median over
rounds is reported with every round's value, so drift of the machine's state shows.

    python benchmarks/speed_compare.py DENSE PRUNED_A PRUNED_B [--rounds 5] [--prompt 128] [--new 128] \
        [--prefill-dtype float32] [--decode-dtype auto] [--tag _x]
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
    ap.add_argument("models", nargs="+", type=model_arg, help="model folders, hub ids or 'default'; the first is the reference")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prefill-dtype", default="auto")
    ap.add_argument("--decode-dtype", default="auto")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    if len(args.models) < 2:
        ap.error("give at least two models: a reference and one to compare with it")

    from rich.console import Console
    from rich.table import Table

    from slmkit.eval.speed import SpeedConfig, alternating
    from slmkit.models import load

    models = {m: load(m, "float32") for m in args.models}
    cfg = SpeedConfig(prompt_tokens=args.prompt, new_tokens=args.new, repeats=1,
                      prefill_dtype=args.prefill_dtype, decode_dtype=args.decode_dtype)
    res = alternating(models, cfg, rounds=args.rounds)
    ref = res[args.models[0]]
    table = Table(title=f"{args.rounds} alternating rounds, prompt {args.prompt}, {args.new} new tokens "
                        f"(prefill {cfg.prefill_dtype}, decode {cfg.decode_dtype}); medians")
    for c in ("model", "params", "decode tok/s", "rounds", "decode vs ref", "prefill tok/s", "prefill vs ref"):
        table.add_column(c, justify="left" if c == "model" else "right")
    for name, r in res.items():
        r["decode_ratio"] = r["decode_tok_s"] / ref["decode_tok_s"]
        r["prefill_ratio"] = r["prefill_tok_s"] / ref["prefill_tok_s"]
        table.add_row(name, f"{r['runs'][0]['params'] / 1e6:.1f}M", f"{r['decode_tok_s']:.1f}",
                      ", ".join(f"{x['decode_tok_s']:.1f}" for x in r["runs"]), f"{r['decode_ratio']:.2f}x",
                      f"{r['prefill_tok_s']:.0f}", f"{r['prefill_ratio']:.2f}x")
    Console(width=170).print(table)
    print(f"wrote {write_result('speed_compare' + args.tag, {'args': vars(args), 'results': res})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
