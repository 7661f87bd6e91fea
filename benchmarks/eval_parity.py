"""Do slmkit's evaluators agree with the references people trust, and how fast are they?

On the embedded default model and the embedded evaluation text:
  (ii) rolling log-likelihood vs lm-evaluation-harness HFLM.loglikelihood_rolling wrapping the
       same loaded model (target: word perplexity within 0.5%), and wall time side by side
       (interleaved document by document, alternating which scorer runs first);
  (i)  sliding-window perplexity vs a direct reference loop in the style of HF's perplexity guide
       (`model(ids, labels=...).loss` per window; target: within 0.1%);
  MC   per-item choices vs lm-eval's `loglikelihood` on ../shared/data/wordnet_mc_dev.jsonl.

    python benchmarks/eval_parity.py                 # full run (~15 min on 2 AVX2 cores)
    python benchmarks/eval_parity.py --docs 2 --mc-limit 40   # quick check
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg, timed, write_result  # noqa: E402

MC_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wordnet_mc_dev.jsonl"


def reference_window_ppl(model, ids, window: int) -> tuple[float, int]:
    """HF perplexity guide, stride = window: mean loss per window times its scored tokens."""
    import torch

    nll_sum, n_tokens = 0.0, 0
    with torch.no_grad():
        for begin in range(0, ids.numel(), window):
            chunk = ids[begin: begin + window][None]
            if chunk.shape[1] < 2:
                break
            loss = model(chunk, labels=chunk).loss  # mean over chunk_len - 1 shifted targets
            nll_sum += loss.item() * (chunk.shape[1] - 1)
            n_tokens += chunk.shape[1] - 1
    return math.exp(nll_sum / n_tokens), n_tokens


def lm_eval_rolling(lm, docs) -> list[float]:
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    return lm.loglikelihood_rolling(reqs, disable_tqdm=True)


def lm_eval_mc(lm, items, prompt: str) -> list[list[float]]:
    from lm_eval.api.instance import Instance

    reqs, k = [], 0
    for it in items:
        ctx = prompt.format(question=it.question)
        for c in it.choices:
            reqs.append(Instance("loglikelihood", {}, (ctx, " " + c), k))
            k += 1
    lls = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    out, k = [], 0
    for it in items:
        out.append(lls[k: k + len(it.choices)])
        k += len(it.choices)
    return out


def argmax(xs):
    return max(range(len(xs)), key=xs.__getitem__)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="default")
    ap.add_argument("--dtype", default="auto", help="auto = the prefill dtype for this CPU")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--docs", type=int, default=None, help="use only the first N eval documents")
    ap.add_argument("--mc-file", default=str(MC_FILE))
    ap.add_argument("--mc-limit", type=int, default=None)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: rolling,window,mc")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    from lm_eval.models.huggingface import HFLM
    from rich.console import Console
    from rich.table import Table

    from slmkit.data import TextData, embedded_text, token_stream
    from slmkit.eval.mc import MCConfig, load_items, multiple_choice
    from slmkit.eval.perplexity import PerplexityConfig, count_words, rolling_perplexity, window_perplexity
    from slmkit.models import load

    console = Console(width=150)
    model, tok = load(args.model, args.dtype)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    data = embedded_text("eval")
    if args.docs:
        data = TextData(data.name + f"[:{args.docs}]", data.docs[: args.docs])
    lm = HFLM(pretrained=model, tokenizer=tok, max_length=args.max_length, batch_size=1)
    t: dict[str, float] = {}
    res: dict = {"model": args.model, "dtype": dtype, "data": data.describe(), "max_length": args.max_length}

    if "rolling" not in skip:
        # Interleaved per document, alternating which scorer goes first, so that drift in this
        # shared machine's speed falls on both sides alike.
        cfg = PerplexityConfig(protocols=["rolling"], max_length=args.max_length)
        ours_ll, ref_ll, n_tok = [], [], 0
        t["ours_rolling"] = t["lm_eval_rolling"] = 0.0
        for i, doc in enumerate(data.docs):
            for who in (("ours", "ref") if i % 2 == 0 else ("ref", "ours")):
                with timed(t, "one"):
                    out = (rolling_perplexity(model, tok, TextData(f"doc{i}", [doc]), cfg)
                           if who == "ours" else lm_eval_rolling(lm, [doc])[0])
                if who == "ours":
                    t["ours_rolling"] += t["one"]
                    ours_ll.append(out["loglikelihood"])
                    n_tok += out["tokens_scored"]
                else:
                    t["lm_eval_rolling"] += t["one"]
                    ref_ll.append(out)
        words = sum(count_words(d) for d in data.docs)
        n_bytes = sum(len(d.encode()) for d in data.docs)
        ours_word, ref_word = math.exp(-sum(ours_ll) / words), math.exp(-sum(ref_ll) / words)
        res["rolling"] = {
            "tokens": n_tok, "ours_word_ppl": ours_word,
            "lm_eval_word_ppl": ref_word, "word_ppl_rel_diff": abs(ours_word / ref_word - 1),
            "ours_bits_per_byte": -sum(ours_ll) / n_bytes / math.log(2),
            "lm_eval_bits_per_byte": -sum(ref_ll) / n_bytes / math.log(2),
            "max_doc_ll_abs_diff": max(abs(a - b) for a, b in zip(ours_ll, ref_ll)),
            "ours_s": t["ours_rolling"], "lm_eval_s": t["lm_eval_rolling"],
            "ours_tok_s": n_tok / t["ours_rolling"], "lm_eval_tok_s": n_tok / t["lm_eval_rolling"],
            "speedup": t["lm_eval_rolling"] / t["ours_rolling"], "timing": "interleaved per document",
        }
        full = rolling_perplexity(model, tok, data, cfg)  # the whole set in one call, as users run it
        res["rolling"]["ours_word_ppl_one_call"] = full["word_perplexity"]
    if "window" not in skip:
        cfg = PerplexityConfig(protocols=["window"], window=args.max_length)
        with timed(t, "ours_window"):
            ours = window_perplexity(model, tok, data, cfg)
        with timed(t, "ref_window"):
            ref, n = reference_window_ppl(model, token_stream(tok, data), args.max_length)
        res["window"] = {"tokens": ours["tokens_scored"], "ref_tokens": n,
                         "ours_ppl": ours["token_perplexity"], "reference_ppl": ref,
                         "rel_diff": abs(ours["token_perplexity"] / ref - 1),
                         "ours_s": t["ours_window"], "reference_s": t["ref_window"]}
    if "mc" not in skip:
        items = load_items(args.mc_file, args.mc_limit)
        mcfg = MCConfig(path=args.mc_file)
        with timed(t, "ours_mc"):
            ours = multiple_choice(model, tok, items, mcfg)
        with timed(t, "lm_eval_mc"):
            ref = lm_eval_mc(lm, items, mcfg.prompt)
        same = sum(r["pred"] == argmax(lls) for r, lls in zip(ours["items"], ref))
        norm = [[ll / len(c.encode()) for ll, c in zip(lls, it.choices)] for lls, it in zip(ref, items)]
        same_norm = sum(r["pred_norm"] == argmax(n) for r, n in zip(ours["items"], norm))
        diffs = [abs(a - b) for r, lls in zip(ours["items"], ref) for a, b in zip(r["loglikelihoods"], lls)]
        res["mc"] = {"items": len(items), "same_pred": same, "same_pred_norm": same_norm,
                     "ours_acc": ours["acc"], "ours_acc_norm": ours["acc_norm"],
                     "lm_eval_acc": sum(argmax(l) == it.answer for l, it in zip(ref, items)) / len(items),
                     "max_ll_abs_diff": max(diffs), "ours_s": t["ours_mc"], "lm_eval_s": t["lm_eval_mc"],
                     "speedup": t["lm_eval_mc"] / t["ours_mc"]}

    table = Table(title=f"eval parity: {args.model} ({dtype}), {data.name}")
    for col in ("check", "slmkit", "reference", "agreement", "slmkit s", "reference s", "speed ratio"):
        table.add_column(col, justify="right")
    if "rolling" in res:
        r = res["rolling"]
        table.add_row("(ii) rolling word ppl vs lm-eval", f"{r['ours_word_ppl']:.4f}", f"{r['lm_eval_word_ppl']:.4f}",
                      f"{100 * r['word_ppl_rel_diff']:.4f}%", f"{r['ours_s']:.1f}", f"{r['lm_eval_s']:.1f}",
                      f"{r['speedup']:.2f}x")
    if "window" in res:
        r = res["window"]
        table.add_row("(i) window ppl vs direct loop", f"{r['ours_ppl']:.4f}", f"{r['reference_ppl']:.4f}",
                      f"{100 * r['rel_diff']:.4f}%", f"{r['ours_s']:.1f}", f"{r['reference_s']:.1f}",
                      f"{r['reference_s'] / r['ours_s']:.2f}x")
    if "mc" in res:
        r = res["mc"]
        table.add_row("MC per-item choice vs lm-eval", f"acc {r['ours_acc']:.3f}", f"acc {r['lm_eval_acc']:.3f}",
                      f"{r['same_pred']}/{r['items']} (norm {r['same_pred_norm']})", f"{r['ours_s']:.1f}",
                      f"{r['lm_eval_s']:.1f}", f"{r['speedup']:.2f}x")
    console.print(table)
    if "rolling" in res:
        r = res["rolling"]
        console.print(f"rolling: {r['tokens']} tokens; slmkit {r['ours_tok_s']:.0f} tok/s, "
                      f"lm-eval {r['lm_eval_tok_s']:.0f} tok/s")
    print(f"wrote {write_result('eval_parity', res)}")
    ok = (res.get("rolling", {}).get("word_ppl_rel_diff", 0) <= 0.005
          and res.get("window", {}).get("rel_diff", 0) <= 0.001
          and res.get("mc", {}).get("same_pred", 0) == res.get("mc", {}).get("items", 0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
