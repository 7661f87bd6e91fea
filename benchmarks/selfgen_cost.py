"""What keeping the teacher's top-k distributions costs while it writes self-generated rows.

`kd_cached` in distill.py trains on the next-token distributions the teacher computed anyway while
sampling its rows; keeping them is a top-k over each step's logits. This times plain
self-generation against generation with `topk`, alternating, same seed (the rows are identical,
checked), cache off, and prints the ratio.

    python benchmarks/selfgen_cost.py [--model default] [--rows 16] [--length 512] [--topk 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg, write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="default")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from slmkit.generate.selfgen import generate_calibration_text, generate_with_teacher_targets
    from slmkit.models import load

    model, tok = load(args.model, "float32")
    runs = {"plain": [], f"top{args.topk}": []}
    ids = {}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = time.perf_counter()
            if name == "plain":
                ids[name] = generate_calibration_text(model, tok, args.rows, args.length, cache=False)
            else:
                ids[name] = generate_with_teacher_targets(model, tok, args.rows, args.length, args.topk,
                                                          cache=False)[0]
            runs[name].append(time.perf_counter() - t)
    same = torch.equal(*ids.values())
    table = Table(title=f"{args.model}: {args.rows} x {args.length} tokens, {args.repeats} runs each, alternating")
    for col in ("generation", "seconds (each run)", "best", "vs plain"):
        table.add_column(col, justify="right" if col != "generation" else "left")
    best = {k: min(v) for k, v in runs.items()}
    for name, times in runs.items():
        table.add_row(name, ", ".join(f"{x:.1f}" for x in times), f"{best[name]:.1f}",
                      f"{best[name] / best['plain']:.3f}x")
    Console().print(table)
    print("identical rows:", same)
    out = write_result(f"selfgen_cost{args.tag}", {"args": vars(args), "seconds": runs, "best": best,
                                                   "ratio": best[f"top{args.topk}"] / best["plain"],
                                                   "identical_rows": same})
    print("wrote", out)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
