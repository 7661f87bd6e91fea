"""Where a speculative decode's time goes: every forward of the target and of the draft timed with
module hooks, for slmkit's loop under several draft-stop policies and for transformers' assisted
generation, prompt by prompt (one JSON line each). A diagnostic beside benchmarks/collab.py,
which gives the acceptance table.

    python benchmarks/spec_probe.py --target models/qwen2.5-coder-1.5b-instruct \\
        --draft models/qwen2.5-coder-0.5b-instruct --dtype bfloat16 --prompts 4 \\
        --policies k4,joint0.5,conf0.6,hf

Policies: `k4` (k = 4 adaptive up to 12, no stop: slmkit's default), `confP` (k = 20, stop after
a token whose top probability is below P), `jointP` (k = 20, stop after the token where the
product of top probabilities drops below P), `hf` (transformers' `assistant_model=`),
`target` (no draft). Each line: wall seconds, new tokens, target and draft forwards (count,
seconds, a histogram of tokens fed per call; prefill reported apart), and the rest ("other_s":
the loops' own overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg  # noqa: E402
from collab import prompts  # noqa: E402


class ForwardClock:
    """Times every forward of a module: (tokens fed, seconds) per call."""

    def __init__(self, model, prefill_above: int = 30):
        self.calls: list[tuple[int, float]] = []
        self.prefill_above = prefill_above
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._t0, self._n = time.perf_counter(), ids.shape[-1]

    def _post(self, module, args, kwargs, out):
        self.calls.append((self._n, time.perf_counter() - self._t0))

    def summary(self) -> dict:
        steps = [c for c in self.calls if c[0] <= self.prefill_above]
        hist: dict[int, int] = {}
        for n, _ in steps:
            hist[n] = hist.get(n, 0) + 1
        return {"calls": len(steps), "seconds": sum(t for _, t in steps),
                "prefill_seconds": sum(t for n, t in self.calls if n > self.prefill_above),
                "tokens_fed": sum(n for n, _ in steps), "hist": dict(sorted(hist.items()))}


def policy(name: str) -> dict:
    if name == "k4":
        return {"k": 4, "max_k": 12, "adaptive": True}
    for prefix, key in (("conf", "min_confidence"), ("joint", "min_joint_confidence")):
        if name.startswith(prefix):
            return {"k": 20, "max_k": 20, "adaptive": False, key: float(name[len(prefix):])}
    raise SystemExit(f"unknown policy {name!r} (k4, confP, jointP, hf, target)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=model_arg, required=True)
    ap.add_argument("--draft", type=model_arg, required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--policies", default="k4,joint0.5,hf")
    args = ap.parse_args()

    import torch

    from slmkit.collab import LocalLM, ModelDrafter, NoDrafter, speculative_generate
    from slmkit.models import load

    target_m, tok = load(args.target, args.dtype)
    draft_m, _ = load(args.draft, args.dtype)
    clocks = {"target": ForwardClock(target_m), "draft": ForwardClock(draft_m)}
    target, draft = LocalLM(target_m, tok), LocalLM(draft_m, tok)
    eos = tok.eos_token_id
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    for i, ids in enumerate(prompts(tok, args.prompts)):
        for name in names:
            for c in clocks.values():
                c.calls.clear()
            t0 = time.perf_counter()
            stats = None
            if name == "hf":
                x = torch.tensor([ids])
                with torch.inference_mode():
                    g = target_m.generate(x, attention_mask=torch.ones_like(x), assistant_model=draft_m,
                                          max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=eos)
                out = g[0, len(ids):].tolist()
            elif name == "target":
                out, stats = speculative_generate(target, NoDrafter(), ids, args.new_tokens, eos_token_id=eos)
            else:
                p = policy(name)
                drafter = ModelDrafter(draft, p.get("min_confidence", 0.0), p.get("min_joint_confidence", 0.0))
                out, stats = speculative_generate(target, drafter, ids, args.new_tokens, k=p["k"],
                                                  max_k=p["max_k"], adaptive=p["adaptive"], eos_token_id=eos)
            wall = time.perf_counter() - t0
            s = {k: c.summary() for k, c in clocks.items()}
            busy = sum(v["seconds"] + v["prefill_seconds"] for v in s.values())
            print(json.dumps({"prompt": i, "policy": name, "wall_s": round(wall, 2), "new_tokens": len(out),
                              "tok_s": round(len(out) / wall, 2), "other_s": round(wall - busy, 2),
                              "acceptance": round(stats.acceptance_rate, 3) if stats and stats.proposed else None,
                              **s}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
