"""Speculative decoding acceptance: target-only vs transformers' assisted generation vs slmkit's
speculative decoding with (a) the plain small draft, (b) drafts slmkit makes (the draft quantized
to int4 by slmkit, prompt-lookup n-gram drafting), greedy, side by side in one run.

    python benchmarks/collab.py --target models/qwen2.5-coder-1.5b-instruct \\
        --draft models/qwen2.5-coder-0.5b-instruct [--prompts 20] [--new-tokens 128] \\
        [--dtype float32] [--tag _qwen]
    python benchmarks/collab.py --target default --drafts self-int4,self-depth,lookup --tag _smollm2

Prompts: code questions (Python FAQ) and prose continuations (Austen), alternating, through the
target's chat template for the questions. For each prompt: the greedy output of every method is
compared with target-only's (identical in float32 is required; in bf16 divergences are counted
and the top-2 logit gap at the first divergence is reported), and its tokens/s. Also reported:
acceptance rate, draft/target cost per token, and the speed-up the standard formula predicts
from them, (1 - a^(k+1)) / ((1 - a)(c k + 1)), next to the measured one; "predicted (verify)"
puts the measured cost v of verifying a typical round (mean drafts per round + 1 tokens, in
one-token steps) in place of the formula's 1.
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

from _common import AUSTEN, model_arg, write_result  # noqa: E402

FAQ = AUSTEN.parent / "python_faq_qa.jsonl"


def prompts(tok, n: int) -> list[list[int]]:
    from slmkit.data.sources import read_jsonl
    from slmkit.generate.prompt import build_prompt

    qa = read_jsonl(FAQ)
    prose = AUSTEN.read_text(encoding="utf-8").split("\n\n")
    prose = [p.replace("\n", " ") for p in prose if len(p) > 400][::7]
    out = []
    for i in range(n):
        if i % 2 == 0:
            text = build_prompt(tok, qa[i // 2 % len(qa)]["question"], "auto")
        else:
            text = prose[i // 2 % len(prose)][:600]
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


def predicted_speedup(a: float, k: float, c: float, v: float = 1.0) -> float:
    """Expected speed-up of speculative decoding (Leviathan et al.): acceptance rate a, k drafts
    per round, draft cost c per token relative to the target; v = the cost of the target's
    (k+1)-token verification forward relative to a one-token step (the formula assumes 1)."""
    if a >= 1:
        return (k + 1) / (c * k + v)
    return (1 - a ** (k + 1)) / ((1 - a) * (c * k + v))


def verify_cost(lm, ids: list[int], n: int, reps: int = 3) -> float:
    """Seconds of one n-token forward after `ids` is cached (best of reps)."""
    s = lm.session()
    s.extend(ids)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        s.extend(ids[-n:])
        best = min(best, time.perf_counter() - t0)
        s.crop(len(ids))
    return best


def per_token_cost(lm, ids: list[int], n: int = 32) -> float:
    """Seconds per decoded token, one at a time with a KV cache."""
    s = lm.session()
    logits = s.extend(ids)[-1]
    t0 = time.perf_counter()
    for _ in range(n):
        logits = s.extend([int(logits.argmax())])[-1]
    return (time.perf_counter() - t0) / n


def top2_gap(lm, ids: list[int], out: list[int], ref: list[int]) -> float:
    """The target's gap between its two highest logits where `out` first leaves `ref`: a
    divergence at a near-tie (gap < 1e-2) is batched-verification rounding, not a wrong token."""
    j = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out), len(ref)))
    logits = lm.session().extend(ids + ref[:j])[-1].float()
    top = logits.topk(2).values
    return float(top[0] - top[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=model_arg, required=True)
    ap.add_argument("--draft", type=model_arg, default=None, help="a smaller model with the target's tokenizer")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' assisted generation")
    ap.add_argument("--drafts", default="draft,draft-int4,lookup",
                    help="comma list of: draft (the --draft model), draft-int4 (it, int4 by slmkit), "
                         "lookup (prompt n-grams), self-int4 (the target itself, int4 by slmkit), "
                         "self-depth (the target with half its layers dropped by slmkit)")
    ap.add_argument("--max-k", type=int, default=12, help="adaptive k's ceiling")
    ap.add_argument("--draft-confidence", type=float, default=0.0,
                    help="model drafters end a proposal below this top probability (0: off)")
    ap.add_argument("--draft-joint-confidence", type=float, default=0.0,
                    help="model drafters end a proposal where the product of their top "
                         "probabilities falls below this (0: off)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import copy

    import torch

    from slmkit.collab import LocalLM, ModelDrafter, NoDrafter, PromptLookupDrafter, speculative_generate
    from slmkit.compress.api import quantize
    from slmkit.compress.quantize.config import RTNConfig
    from slmkit.models import load

    target_m, tok = load(args.target, args.dtype)
    target = LocalLM(target_m, tok, "target")
    wanted = [d.strip() for d in args.drafts.split(",") if d.strip()]
    if args.draft is None and any(d.startswith("draft") for d in wanted):
        ap.error("--drafts draft/draft-int4 need --draft")
    if args.draft is None:
        args.no_hf = True
    lms: dict[str, LocalLM] = {}
    draft_m = None
    if args.draft is not None:
        draft_m, _ = load(args.draft, args.dtype)
    int4 = RTNConfig(bits=4, group_size=128, symmetric=True, head_bits=8)
    for d in wanted:
        if d == "draft":
            lms["slmkit, small draft"] = LocalLM(draft_m, tok, "draft")
        elif d == "draft-int4":
            q = quantize(copy.deepcopy(draft_m).float(), copy.deepcopy(int4))
            lms["slmkit, small draft int4"] = LocalLM(q.to(target_m.dtype), tok, "draft int4")
        elif d == "self-int4":
            q = quantize(copy.deepcopy(target_m).float(), copy.deepcopy(int4))
            lms["slmkit, self int4"] = LocalLM(q.to(target_m.dtype), tok, "self int4")
        elif d == "self-depth":
            from slmkit.compress import DepthPruneConfig, prune
            from slmkit.generate.calibration import build_calibration
            from slmkit.models import get_arch

            m = copy.deepcopy(target_m).float()
            layers = get_arch(m).decoder_layers(m)
            half = sum(p.numel() for p in layers.parameters()) / 2 / m.num_parameters()
            prune(m, DepthPruneConfig(target=half * 0.99),   # just under half the layers' weights
                  build_calibration(m, tok, "embedded", n=16, length=256, seed=0))
            lms["slmkit, self half depth"] = LocalLM(m.to(target_m.dtype), tok, "self half depth")
        elif d != "lookup":
            ap.error(f"unknown draft {d!r}")
    ps = prompts(tok, args.prompts)
    eos = tok.eos_token_id
    methods = {"target only": lambda: NoDrafter()}
    for name, lm in lms.items():
        methods[name] = lambda lm=lm: ModelDrafter(lm, args.draft_confidence, args.draft_joint_confidence)
    if "lookup" in wanted:
        methods["slmkit, prompt lookup"] = lambda: PromptLookupDrafter()
    rows: dict[str, dict] = {m: {"seconds": 0.0, "tokens": 0, "identical": 0, "accepted": 0, "proposed": 0,
                             "rounds": 0}
                             for m in methods}
    if not args.no_hf:
        rows["transformers assisted"] = {"seconds": 0.0, "tokens": 0, "identical": 0}
    for i, ids in enumerate(ps):
        ref = None
        for name, make in methods.items():
            t0 = time.perf_counter()
            out, st = speculative_generate(target, make(), ids, args.new_tokens, k=args.k,
                                           max_k=args.max_k, eos_token_id=eos)
            dt = time.perf_counter() - t0
            ref = out if ref is None else ref
            r = rows[name]
            r["seconds"] += dt
            r["tokens"] += len(out)
            r["identical"] += out == ref
            if out != ref:
                r.setdefault("divergence_top2_gaps", []).append(top2_gap(target, ids, out, ref))
            r["accepted"] += st.accepted
            r["proposed"] += st.proposed
            r["rounds"] += st.rounds
            r.setdefault("per_prompt", []).append({"seconds": dt, "tokens": len(out), "identical": out == ref})
        if not args.no_hf:
            x = torch.tensor([ids])
            t0 = time.perf_counter()
            with torch.inference_mode():
                g = target_m.generate(x, attention_mask=torch.ones_like(x), assistant_model=draft_m,
                                      max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=eos)
            dt = time.perf_counter() - t0
            out = g[0, len(ids):].tolist()
            r = rows["transformers assisted"]
            r["seconds"] += dt
            r["tokens"] += len(out)
            r["identical"] += out == ref[: len(out)]
            r.setdefault("per_prompt", []).append({"seconds": dt, "tokens": len(out),
                                                   "identical": out == ref[: len(out)]})
            if out != ref[: len(out)]:
                r.setdefault("divergence_top2_gaps", []).append(top2_gap(target, ids, out, ref))
        print(i, {k: round(v["tokens"] / v["seconds"], 2) for k, v in rows.items()}, flush=True)

    t_cost = per_token_cost(target, ps[0])
    # what a (k+1)-token verification costs in one-token steps, with slmkit's few-token linears
    # and with PyTorch's plain ones (slmkit.models.narrow)
    one_step = verify_cost(target, ps[0], 1)
    plain = LocalLM(target_m, tok, narrow=False)
    verify = {"slmkit": verify_cost(target, ps[0], args.k + 1) / one_step,
              "plain linear": verify_cost(plain, ps[0], args.k + 1) / verify_cost(plain, ps[0], 1)}
    print(f"verification of {args.k + 1} tokens costs {verify['slmkit']:.2f} one-token steps "
          f"({verify['plain linear']:.2f} with plain nn.Linear)")
    costs = {name: per_token_cost(lm, ps[0]) / t_cost for name, lm in lms.items()}
    base = rows["target only"]["tokens"] / rows["target only"]["seconds"]
    for name, r in rows.items():
        r["tok_s"] = r["tokens"] / r["seconds"]
        r["speedup"] = r["tok_s"] / base
        if r.get("proposed"):
            r["acceptance_rate"] = r["accepted"] / r["proposed"]
    steps_for: dict[int, float] = {}   # a round's verification, in one-token steps, by its length
    for name, c in costs.items():
        r = rows[name]
        k_mean = r["proposed"] / r["rounds"]     # drafts per round (adaptive k, confidence stops)
        n = max(2, round(k_mean) + 1)           # tokens a typical round verifies
        if n not in steps_for:
            steps_for[n] = verify_cost(target, ps[0], n) / one_step
        r["draft_cost_ratio"], r["mean_drafts_per_round"] = c, k_mean
        r["verify_tokens"], r["verify_steps"] = n, steps_for[n]
        r["predicted_speedup"] = predicted_speedup(r["acceptance_rate"], k_mean, c)
        r["predicted_speedup_measured_verify"] = predicted_speedup(r["acceptance_rate"], k_mean, c,
                                                                   steps_for[n])
    # in bf16 a method whose output leaves target-only's may land in easier text (a repetition
    # loop the draft predicts perfectly) or harder; the fair comparison is over the prompts where
    # every method produced target-only's own output
    same = [i for i in range(len(ps)) if all(r["per_prompt"][i]["identical"] for r in rows.values())]
    sub = {name: sum(r["per_prompt"][i]["tokens"] for i in same) /
           max(1e-9, sum(r["per_prompt"][i]["seconds"] for i in same)) for name, r in rows.items()}
    identical_subset = {"prompts": same, "tok_s": sub,
                        "speedup": {k: v / sub["target only"] for k, v in sub.items()} if same else {}}
    print(f"on the {len(same)} prompts where every method matches target-only: "
          + ", ".join(f"{k} {v:.2f}x" for k, v in identical_subset["speedup"].items()))
    if "transformers assisted" in rows:     # each method vs transformers where both match target-only
        hf = rows["transformers assisted"]["per_prompt"]
        for name, r in rows.items():
            both = [i for i in range(len(ps)) if r["per_prompt"][i]["identical"] and hf[i]["identical"]]
            rate = [sum(x[i]["tokens"] for i in both) / max(1e-9, sum(x[i]["seconds"] for i in both))
                    for x in (r["per_prompt"], hf)]
            identical_subset.setdefault("vs_transformers", {})[name] = {
                "prompts": len(both), "ratio": rate[0] / rate[1] if both else None}
        print("vs transformers where both match target-only:",
              {k: (v["prompts"], round(v["ratio"], 3) if v["ratio"] else None)
               for k, v in identical_subset["vs_transformers"].items()})
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"greedy, {args.prompts} prompts x {args.new_tokens} new tokens, {args.dtype}")
    for c in ("method", "tok/s", "speed-up", "identical", "max top-2 gap at divergence", "acceptance",
              "draft cost", "predicted", "predicted (verify)"):
        t.add_column(c, justify="left" if c == "method" else "right")
    for name, r in rows.items():
        gaps = r.get("divergence_top2_gaps")
        t.add_row(name, f"{r['tok_s']:.2f}", f"{r['speedup']:.2f}x", f"{r['identical']}/{args.prompts}",
                  f"{max(gaps):.2g}" if gaps else "-",
                  f"{r['acceptance_rate']:.2f}" if "acceptance_rate" in r else "-",
                  f"{r['draft_cost_ratio']:.2f}" if "draft_cost_ratio" in r else "-",
                  f"{r['predicted_speedup']:.2f}x" if "predicted_speedup" in r else "-",
                  f"{r['predicted_speedup_measured_verify']:.2f}x" if "predicted_speedup" in r else "-")
    Console(width=170).print(t)
    print(f"wrote {write_result('collab' + args.tag, {'args': vars(args), 'rows': rows, 'verify_cost': verify, 'identical_subset': identical_subset})}")
    print(json.dumps({k: round(v['speedup'], 3) for k, v in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
