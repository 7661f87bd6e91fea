"""Proxy-tuning acceptance: LoRA-tune the small model on a task, steer the large untuned model with
the difference (large + alpha x (small tuned - small untuned)), and report the fraction of the gap
closed between the untuned large model and a LoRA-tuned large ceiling, on held-out items.

Metric: mean negative log-likelihood per answer token (teacher-forced, through each model's chat
template), so "gap closed" = (NLL_base - NLL_proxy) / (NLL_base - NLL_ceiling). The task must be
one where tuning matters: the ceiling's answer perplexity must be >= 20% below the untuned
model's (checked and printed), otherwise the ratio means nothing. Default task: GSM8K answers
(their `<<a*b=c>>` calculator notes and `#### N` endings are a format the untuned models do not
produce).

    python benchmarks/proxy_tuning.py --small models/qwen2.5-coder-0.5b-instruct \\
        --large models/qwen2.5-coder-1.5b-instruct [--train-n 100] [--test-n 50]

Alpha: proxy tuning's strength is scored as a sweep (`--alphas`) from the same three forward
passes per item. The headline is alpha = 1 (the paper's setting); the sweep's best alpha is
picked on `--val-n` validation records (between the training and the test records), never on
the test items, and its gap closed on the test items is reported beside it.

Memory: the large base, the tuned small and the untuned small are held together while the proxy
is scored (1.5B + 2 x 0.5B in float32: ~10 GB); the small models are released before the large
model is tuned, alone, in micro-batches of `--micro-batch` rows (gradients accumulated to
`--batch-size`). Session 20's first run held the small models through the large tuning, in
batches of 4: it passed 24 GB and was killed. Peak RSS is printed after each stage.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import AUSTEN, model_arg, write_result  # noqa: E402

GSM8K = AUSTEN.parent / "gsm8k_train250.jsonl"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=model_arg, required=True)
    ap.add_argument("--large", type=model_arg, required=True)
    ap.add_argument("--data", default=str(GSM8K), help="jsonl with question/answer records")
    ap.add_argument("--prompt-key", default="question")
    ap.add_argument("--response-key", default="answer")
    ap.add_argument("--train-n", type=int, default=100, help="first N records train")
    ap.add_argument("--test-n", type=int, default=50, help="last N records are held out")
    ap.add_argument("--seq-len", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=2,
                    help="rows per forward; gradients are accumulated to --batch-size")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--alphas", default="0.5,0.75,1,1.25,1.5,2",
                    help="proxy-tuning strengths scored (comma-separated; 1 is always included)")
    ap.add_argument("--val-n", type=int, default=25,
                    help="records just before the test records, used only to pick alpha")
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
    cfg = TrainConfig(steps=steps, batch_size=args.micro_batch, grad_accum=args.batch_size // args.micro_batch,
                      lr=args.lr, warmup=0.1, log_every=5)
    summary = train(peft_model, CausalLM(), rows, cfg, None)
    return merge_lora(peft_model), summary


def nll(score_fn, pairs):
    """Mean negative log-likelihood per answer token over (ids, n_prompt) pairs: a float, or one
    per alpha when `score_fn` returns [n_alpha, tokens]."""
    total, count = 0.0, 0
    for ids, start in pairs:
        lp = score_fn(ids, start)
        total = total - lp.double().sum(-1)
        count += lp.shape[-1]
    out = total / count
    return out.tolist() if out.dim() else float(out)


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = sorted({float(a) for a in text.split(",") if a.strip()} | {1.0})
    except ValueError:
        raise SystemExit(f"--alphas must be comma-separated numbers, got {text!r}") from None
    return alphas


def main() -> int:
    args = parse_args()
    import torch

    from slmkit.collab import LocalLM
    from slmkit.collab.proxy import proxy_logprobs
    from slmkit.data.sources import read_jsonl
    from slmkit.eval.memory import max_rss_bytes
    from slmkit.models import load

    alphas = parse_alphas(args.alphas)
    if args.micro_batch < 1 or args.batch_size % args.micro_batch:
        raise SystemExit(f"--micro-batch must be >= 1 and divide --batch-size {args.batch_size}, "
                         f"got {args.micro_batch}")
    if args.val_n < 1:
        raise SystemExit("--val-n must be >= 1 (alpha is picked on those records)")
    records = read_jsonl(args.data)
    if args.train_n + args.val_n + args.test_n > len(records):
        raise SystemExit(f"{args.data} has {len(records)} records, fewer than train {args.train_n} + "
                         f"validation {args.val_n} + test {args.test_n}")
    train_rec, test_rec = records[: args.train_n], records[-args.test_n:]
    val_rec = records[-(args.test_n + args.val_n): -args.test_n]
    t: dict[str, float] = {}
    peaks: dict[str, float] = {}

    def stage_peak(stage: str) -> None:
        peaks[stage] = round(max_rss_bytes() / 2 ** 20)
        print(f"peak RSS so far ({stage}): {peaks[stage]} MB", flush=True)

    def own(lm):
        def f(ids, start):
            with torch.inference_mode():
                logits = lm.session().extend(ids)[start - 1: -1].float()
            return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[start:])[:, None])[:, 0]
        return f

    small_m, tok = load(args.small, "float32")
    pairs = encode(tok, test_rec, args)
    val_pairs = encode(tok, val_rec, args)
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
    sweep = functools.partial(proxy_logprobs, base, expert, anti, alpha=alphas)
    proxy_test = nll(sweep, pairs)
    t["score proxy"] = time.perf_counter() - t0
    proxy_val = nll(sweep, val_pairs)
    best = alphas[min(range(len(alphas)), key=lambda i: proxy_val[i])]
    res["proxy"] = proxy_test[alphas.index(1.0)]
    res[f"proxy, alpha {best:g} (picked on validation)"] = proxy_test[alphas.index(best)]
    print(res, flush=True)
    stage_peak("small models tuned, proxy scored")
    del expert, anti, small_m, tuned_m, sweep, base
    gc.collect()

    t0 = time.perf_counter()
    ceiling_m, large_summary = lora_tune(large_m, large_tok, train_rec, args)
    t["tune large"] = time.perf_counter() - t0
    stage_peak("large model tuned")
    res["large tuned (ceiling)"] = nll(own(LocalLM(ceiling_m.eval(), large_tok, "ceiling")), pairs)

    ppl = {k: math.exp(v) for k, v in res.items()}
    matters = ppl["large tuned (ceiling)"] <= 0.8 * ppl["large"]
    span = res["large"] - res["large tuned (ceiling)"]
    gap = (res["large"] - res["proxy"]) / span
    gap_by_alpha = {a: (res["large"] - v) / span for a, v in zip(alphas, proxy_test)}
    print("gap closed on the test items by alpha: "
          + ", ".join(f"{a:g}: {g:.1%}" for a, g in gap_by_alpha.items())
          + f"; alpha picked on validation: {best:g}")
    for k in res:
        print(f"{k:24s} NLL/token {res[k]:.4f}  answer ppl {ppl[k]:.3f}")
    print(f"tuning matters (ceiling ppl <= 0.8 x untuned): {matters} "
          f"({ppl['large tuned (ceiling)'] / ppl['large']:.2f}x); gap closed by proxy tuning (alpha 1): "
          f"{gap:.1%}; with alpha {best:g} picked on validation: {gap_by_alpha[best]:.1%}")
    payload = {"args": vars(args), "nll_per_token": res, "answer_ppl": ppl, "gap_closed": gap,
               "alpha_picked": best, "gap_closed_picked": gap_by_alpha[best],
               "gap_closed_by_alpha": {str(a): g for a, g in gap_by_alpha.items()},
               "proxy_val_nll_by_alpha": {str(a): v for a, v in zip(alphas, proxy_val)},
               "tuning_matters": matters, "seconds": t, "peak_rss_mb": peaks,
               "train": {"small": small_summary, "large": large_summary},
               "answer_tokens": sum(len(ids) - s for ids, s in pairs)}
    print(f"wrote {write_result('proxy_tuning' + args.tag, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
