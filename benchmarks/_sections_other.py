"""RESULTS.md sections on evaluation, training, distillation, collaboration, the shrink recipe and serving: which
results files and rows are current, and their labels. Every number is read from the JSON (see
make_results.py)."""

from __future__ import annotations

from pathlib import Path

from make_results import RESULTS, Runs, Section, f, section, share, table, x


def evaluation() -> Section:
    runs = Runs("eval_parity.json")
    d = runs["eval_parity.json"]
    r, w, mc = d["rolling"], d["window"], d["mc"]
    body = table(["check", "slmkit", "reference", "agreement", "slmkit s", "reference s", "speed-up"], [
        ["word perplexity, rolling, vs lm-eval `loglikelihood_rolling`", f(r["ours_word_ppl"], 6),
         f(r["lm_eval_word_ppl"], 6), f"{r['word_ppl_rel_diff']:.0e} relative", f(r["ours_s"], 1),
         f(r["lm_eval_s"], 1), x(r["lm_eval_s"] / r["ours_s"])],
        ["bits per byte, rolling, vs lm-eval", f(r["ours_bits_per_byte"], 6), f(r["lm_eval_bits_per_byte"], 6),
         "", "", "", ""],
        ["token perplexity, windows, vs a plain `model(ids, labels=ids)` loop", f(w["ours_ppl"], 6),
         f(w["reference_ppl"], 6), f"{w['rel_diff']:.0e} relative", f(w["ours_s"], 1), f(w["reference_s"], 1),
         x(w["reference_s"] / w["ours_s"])],
        [f"multiple choice, {mc['items']} WordNet items, vs lm-eval `loglikelihood`", f"acc {f(mc['ours_acc'])}",
         f"acc {f(mc['lm_eval_acc'])}", f"{mc['same_pred']}/{mc['items']} same choice", f(mc["ours_s"], 1),
         f(mc["lm_eval_s"], 1), x(mc["lm_eval_s"] / mc["ours_s"])]])
    intro = [f"`slmkit eval` beside lm-evaluation-harness on the same loaded model (`{d['model']}`, {d['dtype']}): "
             f"the embedded evaluation text, {d['data']['docs']} documents, {r['tokens']:,} tokens, "
             f"windows of {d['max_length']}. Speed-up = reference seconds / slmkit seconds."]
    return section("Evaluation beside lm-evaluation-harness", intro, body, runs, "evaluation")


def dtype() -> Section:
    runs = Runs("dtype_phase.json")
    d = runs["dtype_phase.json"]
    fp, bf = d["runs"]["float32"], d["runs"]["bfloat16"]
    body = table(["phase", "float32 tok/s", "bf16 tok/s", "bf16 / float32", "`auto` picks"], [
        [f"prefill ({fp['prompt_tokens']} tokens)", f(fp["prefill_tok_s"], 1), f(bf["prefill_tok_s"], 1),
         x(d["bf16_over_fp32"]["prefill"]), d["auto"]["prefill"]],
        [f"decode ({fp['new_tokens']} tokens, KV cache)", f(fp["decode_tok_s"], 1), f(bf["decode_tok_s"], 1),
         x(d["bf16_over_fp32"]["decode"]), d["auto"]["decode"]]])
    agrees = ("picks the faster dtype in both phases" if d["auto_agrees_with_measurement"]
              else "does NOT pick the faster dtype")
    intro = [f"`dtype=\"auto\"` chooses the compute dtype per phase from the CPU's flags; on this CPU it {agrees} "
             f"(`{d['model']}`, median of {fp['repeats']})."]
    return section("Compute dtype by phase", intro, body, runs, "dtype")


def recovery() -> Section:
    name = "distill_recovery_smollm2_kdcached.json"
    runs = Runs(name)
    d = runs[name]
    rec, a = d["recovery"], d["args"]
    soft = rec["data"]["soft"]
    out = [["unpruned", "", "", f(d["dense_ppl"]["in"]), "", f(d["dense_ppl"]["out"]), ""],
           ["width -25%, before training", "", "", f(rec["pruned"]["ppl"]["in"]), share(0),
            f(rec["pruned"]["ppl"]["out"]), share(0)]]
    for label, key in [(f"**KD from the teacher's cached top-{soft['topk']}**, weight {soft['weight']}", "kd_cached"),
                       ("CE on the labels, equal steps", "ce"), ("CE, equal time", "ce_equal_time")]:
        r = rec[key]
        out.append([label, r["steps"], f(r["train_seconds"], 0), f(r["ppl"]["in"]), share(r["recovered"]["in"]),
                    f(r["ppl"]["out"]), share(r["recovered"]["out"])])
    body = table(["SmolLM2-135M", "steps", "train s", "ppl pydoc", "recovered", "ppl Austen", "recovered"], out)
    intro = [f"SmolLM2 width-pruned to {rec['pruned']['params'] / 1e6:.1f}M parameters, then trained on "
             f"{rec['data']['rows']} rows of {rec['data']['length']} tokens (half pydoc, half written by the "
             f"unpruned teacher, which kept its next-token distributions while writing them), batch "
             f"{a['batch_size']}, lr {a['lr']}. KD trains on the cached distributions (no teacher forward); "
             "CE at equal time gets the steps that fit in the KD run's time. Recovered = share of the pruning's "
             "perplexity gap closed."]
    return section("Recovery after pruning: distillation against plain fine-tuning", intro, body, runs,
                   "distillation-and-recovery")


def throughput() -> Section:
    name = "distill_throughput_smollm2_amx_r3.json"
    runs = Runs(name)
    d = runs[name]
    t, a = d["throughput"], d["args"]
    best, med = t["best_tok_s"], t["median_tok_s"]
    trl = next(r["versions"]["trl"] for r in t["runs"]["trl"] if "versions" in r)
    out = []
    for label, key in [("hand-written loop (forward, CE, backward, clip, AdamW)", "hand"),
                       ("hand-written loop under jemalloc", "hand_jemalloc"), ("slmkit `train()`", "slmkit"),
                       ("**slmkit under jemalloc** (how `slmkit finetune` runs)", "slmkit_jemalloc"),
                       (f"TRL {trl} SFTTrainer (its defaults: gradient checkpointing)", "trl")]:
        runs_s = ", ".join(f(r["tok_s"], 1) for r in t["runs"][key])
        out.append([label, runs_s, f(best[key], 1), f(med[key], 1), x(best[key] / best["hand"]),
                    x(best[key] / best["trl"]), f(t["peak_rss_mb"][key], 0)])
    body = table(["loop", "tok/s, each run", "best", "median", "best vs hand", "best vs TRL", "peak RSS MB"], out)
    intro = [f"Full fine-tune of SmolLM2-135M-Instruct, the same {a['batch_size']} x {a['seq_len']}-token rows for "
             f"every loop, bf16 autocast, {a['steps']} timed steps after warm-up; each loop {a['repeats']} times in "
             "its own process, in order, reversed, then in order again."]
    return section("Training throughput beside a hand-written loop and TRL", intro, body, runs, "training-throughput")


def speculative() -> Section:
    bf, fp = "collab_qwen_bf16_joint05.json", "collab_qwen_fp32_joint05.json"
    runs = Runs(bf, fp)
    labels = [("target only", "target only"), ("slmkit, plain 0.5B draft", "slmkit, small draft"),
              ("**slmkit, 0.5B draft in int4 by slmkit** (RTN, int8 head)", "slmkit, small draft int4"),
              ("slmkit, prompt lookup (no draft model)", "slmkit, prompt lookup"),
              ("transformers' assisted generation, same pair", "transformers assisted")]
    out = []
    for label, key in labels:
        cells = [label]
        for name in (bf, fp):
            r = runs[name]["rows"].get(key)
            n = runs[name]["args"]["prompts"]
            cells += ["-"] * 3 if r is None else [f(r["tok_s"], 2), x(r["speedup"]), f"{r['identical']}/{n}"]
        out.append(cells)
    body = table(["Qwen2.5-Coder-1.5B target", "bf16 tok/s [a]", "speed-up", "same as target-only",
                  "float32 tok/s [b]", "speed-up", "same as target-only"], out)
    rb, rf = runs[bf]["rows"], runs[fp]["rows"]
    body += ["", "Plain draft against transformers in the same run: "
             f"{x(rb['slmkit, small draft']['tok_s'] / rb['transformers assisted']['tok_s'])} in bf16, "
             f"{x(rf['slmkit, small draft']['tok_s'] / rf['transformers assisted']['tok_s'])} in float32. "
             "In float32 greedy outputs must equal target-only's; in bf16 a batched verification can round a "
             "logit tie the other way, so outputs may differ."]
    a = runs[fp]["args"]
    intro = [f"Greedy, {a['prompts']} prompts (Python questions and Austen continuations), up to {a['new_tokens']} "
             f"new tokens; model drafts propose up to {a['max_k']} tokens and stop after the product of their top "
             f"probabilities falls below {a['draft_joint_confidence']}; transformers runs its own defaults. "
             "Speed-up is against target-only in the same run."]
    return section("Speculative decoding beside transformers' assisted generation", intro, body, runs,
                   "speculative-decoding")


def proxy_tuning() -> Section:
    name = "proxy_tuning_qwen_gsm8k.json"
    runs = Runs(name)
    d = runs[name]
    a, nll, ppl = d["args"], d["nll_per_token"], d["answer_ppl"]
    picked = f"proxy, alpha {d['alpha_picked']} (picked on validation)"
    gap = {"large": 0.0, "proxy": d["gap_closed"], picked: d["gap_closed_picked"], "large tuned (ceiling)": 1.0}
    out = [[label, f(nll[key]), f(ppl[key], 2), share(gap[key]) if key in gap else ""]
           for label, key in [("0.5B untuned", "small"), ("0.5B LoRA-tuned", "small tuned"), ("1.5B untuned", "large"),
                              ("proxy, alpha 1", "proxy"), (f"**{picked}**", picked),
                              ("1.5B LoRA-tuned (the ceiling)", "large tuned (ceiling)")]]
    body = table(["model", "NLL / answer token", "answer ppl", "gap closed"], out)
    intro = [f"The 1.5B Qwen steered by a tuned 0.5B: large + alpha x (small tuned - small untuned) logits. LoRA r "
             f"{a['lora_r']}, {a['epochs']} epochs on {a['train_n']} GSM8K records; alpha picked on the next "
             f"{a['val_n']}; scored on the last {a['test_n']} ({d['answer_tokens']:,} answer tokens). Gap closed = "
             "(NLL 1.5B untuned - NLL) / (NLL 1.5B untuned - NLL 1.5B tuned)."]
    return section("Proxy tuning", intro, body, runs, "proxy-tuning")


def weak_to_strong() -> Section:
    name = "weak_to_strong_smollm2_qwen05b.json"
    runs = Runs(name)
    d = runs[name]
    acc = d["accuracy"]
    out = [[label, f(acc[key])] for label, key in [
        ("weak teacher, SmolLM2-135M zero-shot", "weak"), ("strong student, Qwen2.5-Coder-0.5B zero-shot",
                                                           "strong zero-shot"),
        ("**strong student fine-tuned on the weak labels**", "weak-to-strong"),
        ("strong ceiling, fine-tuned on the gold labels", "strong ceiling")]]
    body = table([f"held-out accuracy ({d['n_test']} items)", ""], out)
    body += ["", f"PGR = (weak-to-strong - weak) / (ceiling - weak) = **{d['pgr']:.2f}**. The weak labels were "
                 f"right on {share(d['weak_label_accuracy'])} of the {d['n_train']} training items; the student "
                 "already knew most of the task, so the PGR measures how far it stays above its teacher."]
    intro = [f"WordNet multiple choice, one item in {d['args']['test_every']} held out; full fine-tune on the "
             f"answer tokens, {d['args']['epochs']} epochs, batch {d['args']['batch_size']}."]
    return section("Weak-to-strong", intro, body, runs, "weak-to-strong")


def cascade() -> Section:
    name = "cascade_qwen.json"
    runs = Runs(name)
    d = runs[name]
    h = d["held_out"]
    body = table(["", "accuracy", "queries sent to the 1.5B", "compute vs 1.5B alone"], [
        ["Qwen2.5-Coder-0.5B alone", f(h["held_out_small_accuracy"]), share(0), x(d["cost_ratio"])],
        ["Qwen2.5-Coder-1.5B alone", f(h["held_out_large_accuracy"]), share(1), x(1)],
        [f"**cascade**, threshold {h['threshold']:.3f}", f(h["held_out_accuracy"]), share(h["fraction_to_large"]),
         x(d["cost_ratio"] + h["fraction_to_large"])]])
    body += ["", f"The cascade keeps {share(h['kept_of_large'])} of the large model's accuracy."]
    intro = [f"The small model answers every item of {d['n']} WordNet multiple-choice items; an item goes on to the "
             "large model when the small model's choice probability is below a threshold, picked on the even "
             f"items ({h['picked_on']}) as the cheapest keeping {d['args']['keep']:.0%} of the large model's "
             f"accuracy; reported on the other {h['held_out']}. Compute counts the small model on every query."]
    return section("Cascade", intro, body, runs, "cascade")


def shrink() -> Section:
    s5, fresh = "shrink_smollm2_s5.json", "shrink_smollm2.json"
    runs = Runs(s5, fresh)
    d = runs[s5]
    out_key = next(k for k in d["pareto"][0]["ppl"] if k != "default")
    src = next(p for p in d["pareto"] if p["stage"] == "00-source")
    rows = [["source (bf16)", "", f(src["disk_mb"], 1), x(1), f(src["ppl"]["default"]), f(src["ppl"][out_key]), ""]]
    for p in d["pareto"]:
        if p["stage"] == "00-source":
            continue
        acc = d["acceptance"][p["run"]]
        final = p["stage"] == acc["final_model"]
        ratio = acc["side_by_side"]["decode_ratio"] if final else None
        rows.append([p["run"], p["stage"], f(p["disk_mb"], 1), x(p["disk_mb"] / src["disk_mb"]),
                     f(p["ppl"]["default"]), f(p["ppl"][out_key]), x(ratio) if final else ""])
    body = table(["recipe", "stage", "disk MB", "vs source", "ppl pydoc", "ppl Austen", "decode vs source"], rows,
                 left=2)
    wall = runs[fresh]["acceptance"]["default"]["wall_s"]
    body += ["", f"`slmkit shrink default` from an empty cache took {wall / 60:.1f} min end to end [b]. Decode vs "
                 f"source: the final checkpoint and the bf16 source alternated in one process, "
                 f"{d['acceptance']['default']['side_by_side']['rounds']} rounds [a]."]
    intro = ["The default recipe on SmolLM2-135M-Instruct (width -25%, distillation, GPTQ int4 with an int8 head and "
             "4-bit embeddings, a q4_0 GGUF export), with quantize-only beside it."]
    return section("`slmkit shrink default`", intro, body, runs, "shrink")


def serving() -> Section:
    names = [n for n in ("serve_smollm2.json", "serve_qwen05b.json") if (RESULTS / n).exists()]
    extra = [n for n in ("serve_draft_qwen15b.json", "serve_load_smollm2_5min.json") if (RESULTS / n).exists()]
    runs = Runs(*names, *extra)
    rows = []
    for n in names:
        r = runs[n]["rows"]
        model = f"{Path(runs[n]['tokenizer']).name} ({Path(runs[n]['gguf']).name})"
        for load in ("1", "4", "8", "16"):
            ours, peer, torch_ = (r.get(f"{e}@{load}") for e in ("slmkit-llamacpp", "llama-server", "slmkit-torch"))
            if not ours or not peer:
                continue
            rows.append([f"{model} [{runs.key(n)}]" if len(names) > 1 else model, f"c={load}",
                         f(ours["output_tok_s"], 1), f(peer["output_tok_s"], 1),
                         x(ours["output_tok_s"] / peer["output_tok_s"]),
                         f"{ours['ttft_ms_p99']:.0f} / {peer['ttft_ms_p99']:.0f}",
                         f(torch_["output_tok_s"], 1) if torch_ else "-"])
        ours, peer = r.get("slmkit-llamacpp@mixed"), r.get("llama-server@mixed")
        if ours and peer:
            rows.append([model, "mixed: short streams' TTFT p99 (ms)", "", "", "",
                         f"{ours['short_ttft_ms_p99']:.0f} / {peer['short_ttft_ms_p99']:.0f} "
                         f"({x(ours['short_ttft_ms_p99'] / peer['short_ttft_ms_p99'])})", ""])
        ours, peer, torch_ = (r.get(f"{e}@prefix") for e in ("slmkit-llamacpp", "llama-server", "slmkit-torch"))
        if ours:
            def cut(row):
                return f"{row['first_ttft_ms']:.0f} -> {row['later_ttft_ms']:.0f} ({row['ttft_cut']:.1f}x)" if row else "-"
            rows.append([model, "repeated 1,000-token system prompt: TTFT first -> later (ms)", "", "", "",
                         f"{cut(ours)} / {cut(peer)}", cut(torch_)])
    body = table(["GGUF", "load", "slmkit tok/s", "llama-server tok/s", "ratio", "TTFT p99 ms slmkit / llama-server",
                  "slmkit PyTorch int4 tok/s"], rows, left=2)
    lines = []
    if "serve_draft_qwen15b.json" in extra:
        d = runs["serve_draft_qwen15b.json"]
        lines.append(f"- `--draft`: {Path(d['model']).name} alone {d['alone_tok_s']:.2f} tok/s, drafted by "
                     f"{Path(d['draft']).name} {d['draft_tok_s']:.2f} tok/s ({x(d['speedup'])}; "
                     f"{d['acceptance_rate']:.0%} of draft tokens accepted), single stream, greedy, "
                     f"{d['max_tokens']} new tokens [{runs.key('serve_draft_qwen15b.json')}]")
    if "serve_load_smollm2_5min.json" in extra:
        ld = runs["serve_load_smollm2_5min.json"]
        lines.append(f"- Load: {ld['clients']} streaming clients for {ld['seconds']:.0f} s on "
                     f"{Path(ld['model']).name}: {ld['complete']} complete, {ld['refused']} refused (429), "
                     f"{ld['errors']} errors; resident memory {ld['rss_mb_after_warmup']:.0f} MB after warm-up, "
                     f"{ld['rss_mb_last_minute']:.0f} MB in the last minute ({ld['rss_growth']:+.1%}) "
                     f"[{runs.key('serve_load_smollm2_5min.json')}]")
    if lines:
        body += [""] + lines
    intro = ["`slmkit serve` (llama.cpp's kernels under slmkit's scheduler) beside llama.cpp's own `llama-server` on "
             "the same GGUF, both driven by GuideLLM at fixed concurrency (256-token prompts, 128 output tokens), "
             "the servers one at a time; the last column is slmkit's PyTorch engine on an HF-format int4 folder "
             "of the same model. The mixed load sends one 2,000-token prompt, then four short streams; the prefix "
             "load sends six requests one after another that share a 1,000-token system prompt (prefix reuse: the "
             "first computes it, the later ones take it from the cache). GuideLLM runs on the same 2 cores as the "
             "server it drives."]
    return section("Serving under load", intro, body, runs, "serving")


FIRST = [evaluation, dtype]
SECTIONS = [recovery, throughput, speculative, proxy_tuning, weak_to_strong, cascade, shrink, serving]
