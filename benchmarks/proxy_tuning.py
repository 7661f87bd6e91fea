"""Proxy-tuning acceptance: LoRA-tune the small model on a task, steer the large untuned model with
the difference (large + alpha x (small tuned - small untuned)), and report the fraction of the gap
closed between the untuned large model and a LoRA-tuned large ceiling, on held-out items.

Metric: mean negative log-likelihood per answer token (teacher-forced, through each model's chat
template), so "gap closed" = (NLL_base - NLL_proxy) / (NLL_base - NLL_ceiling). The task must be
one where tuning matters: the ceiling's answer perplexity must be >= 20% below the untuned
model's (checked and printed), otherwise the ratio means nothing. Default task: GSM8K answers
(their `<<a*b=c>>` calculator notes and `#### N` endings are a format the untuned models do not
produce).

    python benchmarks/proxy_tuning.py --small /work/models/qwen2.5-coder-0.5b-instruct \\
        --large /work/models/qwen2.5-coder-1.5b-instruct [--train-n 100] [--test-n 50]

Memory: the large base, the tuned small and the untuned small are held together while the proxy
is scored (1.5B + 2 x 0.5B in float32: ~10 GB); the large model is tuned last, alone.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import AUSTEN, write_result  # noqa: E402

GSM8K = AUSTEN.parent / "gsm8k_train250.jsonl"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", required=True)
    ap.add_argument("--large", required=True)
    ap.add_argument("--data", default=str(GSM8K), help="jsonl with question/answer records")
    ap.add_argument("--prompt-key", default="question")
    ap.add_argument("--response-key", default="answer")
    ap.add_argument("--train-n", type=int, default=100, help="first N records train")
    ap.add_argument("--test-n", type=int, default=50, help="last N records are held out")
    ap.add_argument("--seq-len", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=1.0, help="proxy-tuning strength")
    ap.add_argument("--tag", default="")
    return ap.parse_args()


def encode(tok, records, args) -> list[tuple[list[int], int]]:
    from slmkit.train.sft import _encode_chat

    return [_encode_chat(tok, r[args.prompt_key], r[args.response_key]) for r in records]


def lora_tune(model, tok, records, args) -> tuple[object, dict]:
    """LoRA on every decoder projection, merged back -> (plain model, training summary)."""
    from slmkit.train import CausalLM, TrainConfig, train
    from slmkit.train.lora import LoRAConfig, add_lora, merge_lora
    from slmkit.train.sft import sft_batches

    rows = sft_batches(tok, [{"prompt": r[args.prompt_key], "response": r[args.response_key]} for r in records],
                       args.seq_len)
    steps = math.ceil(len(records) / args.batch_size) * args.epochs
    peft_model = add_lora(model, LoRAConfig(r=args.lora_r, alpha=2.0 * args.lora_r))
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, warmup=0.1, log_every=5)
    summary = train(peft_model, CausalLM(), rows, cfg, None)
    return merge_lora(peft_model), summary


def nll(score_fn, pairs) -> float:
    """Mean negative log-likelihood per answer token over (ids, n_prompt) pairs."""
    total, count = 0.0, 0
    for ids, start in pairs:
        lp = score_fn(ids, start)
        total -= float(lp.sum())
        count += lp.numel()
    return total / count


def main() -> int:
    args = parse_args()
    import torch

    from slmkit.collab import LocalLM
    from slmkit.collab.proxy import proxy_logprobs
    from slmkit.data.sources import read_jsonl
    from slmkit.models import load

    records = read_jsonl(args.data)
    if args.train_n + args.test_n > len(records):
        raise SystemExit(f"{args.data} has {len(records)} records, fewer than train {args.train_n} + test {args.test_n}")
    train_rec, test_rec = records[: args.train_n], records[-args.test_n:]
    t: dict[str, float] = {}

    def own(lm):
        def f(ids, start):
            with torch.inference_mode():
                logits = lm.session().extend(ids)[start - 1: -1].float()
            return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[start:])[:, None])[:, 0]
        return f

    small_m, tok = load(args.small, "float32")
    pairs = encode(tok, test_rec, args)
    anti = LocalLM(small_m, tok, "small")
    res = {"small": nll(own(anti), pairs)}
    t0 = time.perf_counter()
    tuned_m, small_summary = lora_tune(copy.deepcopy(small_m), tok, train_rec, args)
    t["tune small"] = time.perf_counter() - t0
    expert = LocalLM(tuned_m.eval(), tok, "small tuned")
    res["small tuned"] = nll(own(expert), pairs)
    print(res, flush=True)

    large_m, large_tok = load(args.large, "float32")
    if encode(large_tok, test_rec[:3], args) != pairs[:3]:
        raise SystemExit("the small and large tokenizers render the chat differently; proxy tuning needs one")
    base = LocalLM(large_m, large_tok, "large")
    res["large"] = nll(own(base), pairs)
    t0 = time.perf_counter()
    res["proxy"] = nll(functools.partial(proxy_logprobs, base, expert, anti, alpha=args.alpha), pairs)
    t["score proxy"] = time.perf_counter() - t0
    print(res, flush=True)
    del expert, anti, small_m, tuned_m

    t0 = time.perf_counter()
    ceiling_m, large_summary = lora_tune(large_m, large_tok, train_rec, args)
    t["tune large"] = time.perf_counter() - t0
    res["large tuned (ceiling)"] = nll(own(LocalLM(ceiling_m.eval(), large_tok, "ceiling")), pairs)

    ppl = {k: math.exp(v) for k, v in res.items()}
    matters = ppl["large tuned (ceiling)"] <= 0.8 * ppl["large"]
    gap = (res["large"] - res["proxy"]) / (res["large"] - res["large tuned (ceiling)"])
    for k in res:
        print(f"{k:24s} NLL/token {res[k]:.4f}  answer ppl {ppl[k]:.3f}")
    print(f"tuning matters (ceiling ppl <= 0.8 x untuned): {matters} "
          f"({ppl['large tuned (ceiling)'] / ppl['large']:.2f}x); gap closed by proxy tuning: {gap:.1%}")
    payload = {"args": vars(args), "nll_per_token": res, "answer_ppl": ppl, "gap_closed": gap,
               "tuning_matters": matters, "seconds": t,
               "train": {"small": small_summary, "large": large_summary},
               "answer_tokens": sum(len(ids) - s for ids, s in pairs)}
    print(f"wrote {write_result('proxy_tuning' + args.tag, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
