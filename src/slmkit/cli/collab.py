"""`slmkit generate`, `slmkit proxy`, `slmkit route`: small and large models together.

  slmkit generate MODEL --prompt "..." [--draft D | --prompt-lookup] [--k 4] [--greedy]
  slmkit proxy --base L --expert S --anti-expert S0 --prompt "..." [--alpha 1]
  slmkit route --small S --large L --data items.jsonl [--threshold T]   (cascade; with answers in
        the data it also sweeps every threshold and prints the accuracy / cost curve)

A model is a hub id, folder, .gguf or 'default'; for --large also an OpenAI-compatible endpoint
written as URL#MODEL (e.g. http://127.0.0.1:8000/v1#qwen).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from slmkit.collab import LocalLM, ModelDrafter, PromptLookupDrafter, speculative_generate
from slmkit.collab.proxy import proxy_generate_batch
from slmkit.collab.remote import RemoteLM
from slmkit.collab.route import cascade, logprob_confidence, sweep
from slmkit.data.answers import EXTRACTORS
from slmkit.data.sources import read_jsonl
from slmkit.errors import SlmkitError
from slmkit.generate import Sampling
from slmkit.generate import generate as run_engine
from slmkit.generate.prompt import build_prompt
from slmkit.models import load


def add_parser(sub, argv=()):
    g = sub.add_parser("generate", help="generate text, optionally with speculative decoding",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("model")
    g.add_argument("--prompt", required=True)
    g.add_argument("--draft", default=None, help="draft model (same tokenizer)")
    g.add_argument("--prompt-lookup", action="store_true", help="draft by n-gram lookup in the context")
    g.add_argument("--k", type=int, default=4, help="draft tokens per round (adaptive; default 4)")
    g.add_argument("--draft-confidence", type=float, default=0.0, metavar="P",
                   help="end a draft proposal where the draft's top probability falls below P "
                        "(transformers' assisted generation uses 0.4; default 0: always k tokens)")
    g.add_argument("--draft-joint-confidence", type=float, default=0.0, metavar="P",
                   help="end a draft proposal where the product of the draft's top probabilities "
                        "over it falls below P (e.g. 0.5 with --k 20; default 0: off)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: the model's generation config, else 1)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: the model's, else 1)")
    g.add_argument("--greedy", action="store_true", help="always take the most likely token (temperature 0)")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampling")
    g.add_argument("--dtype", default="auto", help="decode dtype (auto picks per CPU)")
    g.add_argument("--chat", default="auto", choices=["auto", "yes", "no"], help="use the chat template")

    p = sub.add_parser("proxy", help="proxy-tune a large model with a small expert / anti-expert",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in ("--base", "--expert", "--anti-expert"):
        p.add_argument(flag, required=True)
    p.add_argument("--prompt", required=True, action="append",
                   help="repeat for several prompts, decoded together in one batch")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--chat", default="auto", choices=["auto", "yes", "no"])

    r = sub.add_parser("route", help="cascade: small model first, large model when unsure",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--small", required=True)
    r.add_argument("--large", required=True, help="model, or URL#MODEL of an OpenAI-compatible endpoint")
    r.add_argument("--data", required=True, help="jsonl with a prompt field (and an answer field to score)")
    r.add_argument("--prompt-field", default="question")
    r.add_argument("--answer-field", default="answer")
    r.add_argument("--extract", default="gsm8k", help="answer extractor for scoring: gsm8k, exact")
    r.add_argument("--threshold", type=float, default=-1.0,
                   help="escalate when mean token log-prob of the small answer is below this")
    r.add_argument("--limit", type=int, default=None)
    r.add_argument("--max-new-tokens", type=int, default=256)
    r.add_argument("--out", default=None, help="write results (json) and the curve (png) here")
    r.add_argument("--dtype", default="auto")
    return g


def _local(source: str, dtype: str):
    model, tok = load(source, dtype, phase="decode")
    return LocalLM(model, tok, source)


def _lm(source: str, dtype: str):
    if "://" in source:
        url, _, model = source.partition("#")
        if not model:
            raise SlmkitError(f"remote model {source!r}: write it as URL#MODEL")
        return RemoteLM(url, model)
    return _local(source, dtype)


def _prompt_ids(lm, text: str, chat: str) -> list[int]:
    return lm.encode(build_prompt(lm.tokenizer, text, chat))


def run(ns) -> int:
    return {"generate": _generate, "proxy": _proxy, "route": _route}[ns.command](ns)


def _generate(ns) -> int:
    target = _local(ns.model, ns.dtype)
    ids = _prompt_ids(target, ns.prompt, ns.chat)
    eos = target.tokenizer.eos_token_id
    if ns.draft and ns.prompt_lookup:
        raise SlmkitError("give --draft or --prompt-lookup, not both")
    sampling = Sampling.for_model(target.model, max_new_tokens=ns.max_new_tokens,
                                  temperature=0.0 if ns.greedy else ns.temperature, top_p=ns.top_p,
                                  seed=ns.seed)
    t0 = time.perf_counter()
    info = {}
    if ns.draft or ns.prompt_lookup:  # speculative decoding samples at the temperature alone
        drafter = (ModelDrafter(_local(ns.draft, ns.dtype), ns.draft_confidence, ns.draft_joint_confidence)
                   if ns.draft else PromptLookupDrafter())
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        out, stats = speculative_generate(target, drafter, ids, ns.max_new_tokens, k=ns.k,
                                          temperature=sampling.temperature, eos_token_id=eos)
        info = stats.as_dict()
    else:
        out = run_engine(target.model, target.tokenizer, [ids], sampling)[0].token_ids
    dt = time.perf_counter() - t0
    print(target.tokenizer.decode(out, skip_special_tokens=True))
    print(json.dumps({"new_tokens": len(out), "seconds": round(dt, 2),
                      "tok_s": round(len(out) / dt, 2), **info}))
    return 0


def _proxy(ns) -> int:
    base = _local(ns.base, ns.dtype)
    expert, anti = _local(ns.expert, ns.dtype), _local(ns.anti_expert, ns.dtype)
    prompts = [_prompt_ids(base, p, ns.chat) for p in ns.prompt]
    outs, stats = proxy_generate_batch(base, expert, anti, prompts, ns.max_new_tokens, alpha=ns.alpha,
                                       eos_token_id=base.tokenizer.eos_token_id)
    for out in outs:
        print(base.tokenizer.decode(out, skip_special_tokens=True))
    print(json.dumps({"prompts": len(prompts), "new_tokens": stats.new_tokens,
                      "mean_abs_shift": round(stats.mean_abs_shift, 4)}))
    return 0


def _route(ns) -> int:
    from pathlib import Path

    items = read_jsonl(ns.data)[: ns.limit]
    missing = [i for i, it in enumerate(items) if ns.prompt_field not in it]
    if missing:
        raise SlmkitError(f"{ns.data}: records {missing[:5]} have no {ns.prompt_field!r} field")
    prompts = [str(it[ns.prompt_field]) for it in items]
    small, large = _local(ns.small, ns.dtype), _lm(ns.large, ns.dtype)
    res = cascade(small, large, prompts, ns.threshold, max_new_tokens=ns.max_new_tokens)
    summary = dict(res.stats)
    if all(ns.answer_field in it for it in items):
        ex = EXTRACTORS[ns.extract]
        gold = [ex(str(it[ns.answer_field])) for it in items]
        small_ans = small.generate(prompts, ns.max_new_tokens)
        large_ans = large.generate(prompts, ns.max_new_tokens)
        sc = [ex(a) == g for a, g in zip(small_ans, gold)]
        lc = [ex(a) == g for a, g in zip(large_ans, gold)]
        conf = [logprob_confidence(small, p, a) for p, a in zip(prompts, small_ans)]
        summary.update({"accuracy_small": sum(sc) / len(sc), "accuracy_large": sum(lc) / len(lc),
                        "accuracy_cascade": sum(ex(a) == g for a, g in zip(res.answers, gold)) / len(gold),
                        "curve": sweep(sc, lc, conf)})
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}))
    if ns.out:
        out = Path(ns.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "route.json").write_text(json.dumps({"summary": summary, "answers": res.answers,
                                                    "escalated": res.escalated}, indent=1))
        if "curve" in summary:
            _plot_curve(summary["curve"], out / "route_curve.png")
        print(f"wrote {out}")
    return 0


def _plot_curve(points: list[dict], path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot([p["fraction_to_large"] for p in points], [p["accuracy"] for p in points], "o-")
    ax.set_xlabel("fraction of queries sent to the large model")
    ax.set_ylabel("cascade accuracy")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
