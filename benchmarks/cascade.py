"""Cascade acceptance on a multiple-choice task both models can be scored on: the small model
answers every item; an item goes on to the large model when the small model's confidence in its
pick (its choice probability, softmax over the choice log-likelihoods) is below a threshold.

The threshold is chosen on half of the items (even positions) as the cheapest one keeping
>= --keep of the large model's accuracy there, and evaluated on the other half (odd positions),
so the reported share is not fitted to the items it is reported on. The whole curve
(accuracy vs fraction sent to the large model, every threshold) is plotted.

    python benchmarks/cascade.py --small models/qwen2.5-coder-0.5b-instruct \\
        --large models/qwen2.5-coder-1.5b-instruct [--data ../shared/data/wordnet_mc_dev.jsonl]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import AUSTEN, RESULTS, model_arg, write_result  # noqa: E402

MC = AUSTEN.parent / "wordnet_mc_dev.jsonl"


def score(model_path: str, items, dtype: str) -> dict:
    from slmkit.eval.mc import MCConfig, multiple_choice
    from slmkit.models import load

    model, tok = load(model_path, dtype)
    t0 = time.perf_counter()
    r = multiple_choice(model, tok, items, MCConfig())
    seconds = time.perf_counter() - t0
    del model
    return {"acc": r["acc"], "seconds": seconds, "items": r["items"]}


def split_eval(small, large, conf, keep: float) -> dict:
    from slmkit.collab.route import best_threshold, sweep

    pick = [i for i in range(len(conf)) if i % 2 == 0]
    held = [i for i in range(len(conf)) if i % 2 == 1]

    def sub(idx):
        return [small[i] for i in idx], [large[i] for i in idx], [conf[i] for i in idx]

    s, lg, c = sub(pick)
    chosen = best_threshold(sweep(s, lg, c), keep, sum(lg) / len(lg))
    if chosen is None:
        return {"threshold": None}
    s, lg, c = sub(held)
    up = [x < chosen["threshold"] for x in c]
    acc = sum(b if u else a for a, b, u in zip(s, lg, up)) / len(held)
    large_acc = sum(lg) / len(held)
    return {"threshold": chosen["threshold"], "picked_on": len(pick), "held_out": len(held),
            "held_out_accuracy": acc, "held_out_large_accuracy": large_acc,
            "held_out_small_accuracy": sum(s) / len(held),
            "kept_of_large": acc / large_acc, "fraction_to_large": sum(up) / len(held)}


def plot(points, small_acc, large_acc, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["fraction_to_large"] for p in points], [p["accuracy"] for p in points], "-", label="cascade")
    ax.axhline(large_acc, ls="--", c="gray", label="large only")
    ax.axhline(small_acc, ls=":", c="gray", label="small only")
    ax.set_xlabel("fraction of queries sent to the large model")
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=model_arg, required=True)
    ap.add_argument("--large", type=model_arg, required=True)
    ap.add_argument("--data", default=str(MC))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--keep", type=float, default=0.95)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    from slmkit.collab.route import choice_confidence, sweep
    from slmkit.eval.mc import load_items

    items = load_items(args.data, args.limit)
    small, large = score(args.small, items, args.dtype), score(args.large, items, args.dtype)
    s_ok = [r["pred"] == r["answer"] for r in small["items"]]
    l_ok = [r["pred"] == r["answer"] for r in large["items"]]
    conf = [choice_confidence(r["loglikelihoods"]) for r in small["items"]]
    cost = small["seconds"] / large["seconds"]
    points = sweep(s_ok, l_ok, conf, large_cost=1.0, small_cost=cost)
    held = split_eval(s_ok, l_ok, conf, args.keep)
    png = RESULTS / f"cascade{args.tag}.png"
    plot(points, small["acc"], large["acc"], png)
    print(f"{len(items)} items: small acc {small['acc']:.3f} ({small['seconds']:.0f} s), large acc "
          f"{large['acc']:.3f} ({large['seconds']:.0f} s); small/large cost {cost:.2f}")
    if held["threshold"] is None:
        print(f"no threshold keeps {args.keep:.0%} of the large model's accuracy on the picking half")
    else:
        print(f"threshold {held['threshold']:.3f} (picked on {held['picked_on']} items) on the "
              f"{held['held_out']} held-out items: accuracy {held['held_out_accuracy']:.3f} = "
              f"{held['kept_of_large']:.1%} of the large model's {held['held_out_large_accuracy']:.3f}, "
              f"{held['fraction_to_large']:.1%} sent to the large model")
    payload = {"args": vars(args), "n": len(items), "small_acc": small["acc"], "large_acc": large["acc"],
               "small_seconds": small["seconds"], "large_seconds": large["seconds"],
               "cost_ratio": cost, "held_out": held, "curve": points, "plot": str(png),
               "per_item": [{"small": a, "large": b, "confidence": c} for a, b, c in zip(s_ok, l_ok, conf)]}
    print(f"wrote {write_result('cascade' + args.tag, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
