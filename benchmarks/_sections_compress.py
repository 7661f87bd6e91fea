"""RESULTS.md sections on compression (quantization, its speed, pruning, low-rank): which results files
and rows are current, and their labels. Every number is read from the JSON (see make_results.py)."""

from __future__ import annotations

from make_results import RESULTS, Runs, Section, f, pct, section, table, x

CALIB = {"embedded": "pydoc", "embedded@0.5,self@0.5": "the default mix: half pydoc, half written by the model"}


def ppl(row: dict) -> tuple[float, float]:
    return row["ppl"]["in"], row["ppl"]["out"]


def quant_setup(a: dict) -> str:
    sym = "symmetric" if a["symmetric"] else "asymmetric"
    return (f"W{a['bits']} g{a['group_size']} {sym}; {a['calib_n']} x {a['calib_len']} calibration tokens "
            f"({CALIB[a['calib']]}), {a['calib_dtype']} calibration passes; {a['eval_tokens']:,} tokens of each text.")


def gptq_peer() -> Section:
    name = "quantize_smollm2_bf16passes_peer.json"
    runs = Runs(name)
    d = runs[name]
    rows = d["rows"]
    base = ppl(rows["baseline (fp32)"])
    labels = [("baseline (bf16 weights, float32 compute)", "baseline (fp32)"), ("RTN", "rtn"),
              ("**slmkit GPTQ** (default: float32 passes)", "gptq [embedded]"),
              ("slmkit GPTQ, bf16 passes", "gptq-bf16 [embedded]"),
              ("llm-compressor GPTQModifier", "llm-compressor gptq [embedded]"),
              ("slmkit GPTQ on the packed int4 kernels", "gptq, packed int4 kernels")]
    out = []
    for label, key in labels:
        r = rows[key]
        a, b = ppl(r)
        inc = ["-", "-"] if key == "baseline (fp32)" else [f(a - base[0]), f(b - base[1])]
        out.append([label, f(a), inc[0], f(b), inc[1], f(r.get("seconds"), 0), f(r.get("peak_rss_mb"), 0)])
    ours, peer = rows["gptq [embedded]"], rows["llm-compressor gptq [embedded]"]
    inc = [(ppl(ours)[i] - base[i]) / (ppl(peer)[i] - base[i]) for i in (0, 1)]
    body = table(["SmolLM2-135M", "ppl pydoc", "increase", "ppl Austen", "increase", "quantize s", "peak RSS MB"], out)
    body += ["", f"slmkit's default GPTQ: {x(inc[0])} the peer's perplexity increase on pydoc and {x(inc[1])} on "
                 f"Austen, in {x(ours['seconds'] / peer['seconds'])} its wall time and "
                 f"{x(ours['peak_rss_mb'] / peer['peak_rss_mb'])} its peak RSS."]
    intro = [f"GPTQ (act-order, static groups, damp {d['args']['gptq_damp']}, clip search with floor 1) beside "
             f"llm-compressor {peer['peer']['versions']['llmcompressor']} (its own venv, float32), on the same "
             "calibration ids. " + quant_setup(d["args"])]
    return section("Quantization: GPTQ beside llm-compressor", intro, body, runs, "quantization")


def awq_peer() -> Section:
    name = "quantize_qwen05b_awq_peer.json"
    runs = Runs(name)
    d = runs[name]
    rows = d["rows"]
    rtn = ppl(rows["rtn"])
    out = []
    for label, key in [("RTN", "rtn"),
                       ("slmkit AWQ, layer objective + duo candidates, no clip", "awq-layer-duo-noclip [embedded]"),
                       ("llm-compressor AWQModifier (its defaults)", "llm-compressor awq [embedded]")]:
        a, b = ppl(rows[key])
        out.append([label, f(a), pct(a, rtn[0]) if key != "rtn" else "", f(b),
                    pct(b, rtn[1]) if key != "rtn" else "", f(rows[key]["seconds"], 0),
                    f(rows[key]["peak_rss_mb"], 0)])
    body = table(["Qwen2.5-Coder-0.5B", "ppl pydoc", "vs RTN", "ppl Austen", "vs RTN", "quantize s", "peak RSS MB"],
                 out)
    intro = ["The only AWQ run beside llm-compressor: slmkit's configuration closest to AWQModifier "
             "(not today's default, which is in the next section), on the same calibration ids. "
             + quant_setup(d["args"])]
    return section("Quantization: AWQ beside llm-compressor", intro, body, runs, "quantization")


def quant_defaults() -> Section:
    runs = Runs("quantize_smollm2_awq_loss.json", "quantize_smollm2_bf16passes_peer.json",
                "quantize_qwen05b_awq_loss.json", "quantize_qwen05b_awq_loss_defaultmix.json",
                "quantize_qwen05b_gptq_clipfloor.json")
    picks = [("SmolLM2-135M", "RTN", "quantize_smollm2_awq_loss.json", "rtn"),
             ("", "GPTQ (default) [pydoc]", "quantize_smollm2_bf16passes_peer.json", "gptq [embedded]"),
             ("", "AWQ, linear objective + guarded clip (the old default) [pydoc]", "quantize_smollm2_awq_loss.json",
              "awq [embedded]"),
             ("", "**AWQ (default: loss objective, no clip)** [pydoc]", "quantize_smollm2_awq_loss.json",
              "awq-loss-noclip [embedded]"),
             ("Qwen2.5-Coder-0.5B", "RTN", "quantize_qwen05b_awq_loss.json", "rtn"),
             ("", "GPTQ (default) [mix]", "quantize_qwen05b_gptq_clipfloor.json",
              "gptq-floor1 [embedded@0.5,self@0.5]"),
             ("", "**AWQ (default)** [pydoc]", "quantize_qwen05b_awq_loss.json", "awq-loss-noclip [embedded]"),
             ("", "**AWQ (default)** [mix]", "quantize_qwen05b_awq_loss_defaultmix.json",
              "awq-loss-noclip [embedded@0.5,self@0.5]")]
    out = []
    for model, label, name, key in picks:
        rows = runs[name]["rows"]
        (a, b), (a0, b0) = ppl(rows[key]), ppl(rows["baseline (fp32)"])
        a_ = runs[name]["args"]
        label += ", bf16 passes" if a_["calib_dtype"] == "bfloat16" else ""
        out.append([model and f"{model}, g{a_['group_size']}", label, f(a), x(a / a0, 3), f(b), x(b / b0, 3),
                    runs.key(name)])
    body = table(["model, W4", "method [calibration]", "ppl pydoc", "vs baseline", "ppl Austen", "vs baseline", "run"],
                 out, left=2)
    intro = ["Today's defaults against round-to-nearest (RTN). \"vs baseline\" divides by the unquantized model's "
             "perplexity in the same run, so rows from different runs compare. [pydoc]: pydoc calibration rows; "
             "[mix]: the default mix, half pydoc, half written by the model. Asymmetric groups, float32 "
             "calibration passes unless noted."]
    return section("Quantization: today's defaults against RTN", intro, body, runs, "quantization")


def quant_speed() -> Section:
    runs = Runs("quantize_speed_qwen05b_s5.json", "int_kernels.json")
    d = runs["quantize_speed_qwen05b_s5.json"]
    rows, bf = d["rows"], d["rows"]["bf16 dense"]
    out = [[label, f(rows[key]["prefill_tok_s"], 1), x(rows[key]["prefill_tok_s"] / bf["prefill_tok_s"]),
            f(rows[key]["decode_tok_s"], 1), x(rows[key]["decode_tok_s"] / bf["decode_tok_s"]),
            "/".join(d["dtypes"][key]), "a"]
           for label, key in [("dense float32", "fp32 dense"), ("dense bf16 (PyTorch eager)", "bf16 dense"),
                              ("int4, PyTorch's int4pack kernel", "int4 g128, torch int4pack"),
                              ("int4, slmkit's native kernel", "int4 g128, slmkit native"),
                              ("**int4 + int8 lm_head, slmkit's native kernels**",
                               "int4 g128 + int8 lm_head, slmkit native")]]
    a = d["args"]
    body = table(["Qwen2.5-Coder-0.5B", "prefill tok/s", "vs bf16", "decode tok/s", "vs bf16", "prefill/decode dtype",
                  "run"], out)
    layer = [[f"{r['out']} x {r['in']}", f(r["dense bf16"]), f(r["int4 (bf16 act)"]),
              f(r["int4 slmkit native (fp32 act)"]), x(r["int4 (bf16 act)"] / r["int4 slmkit native (fp32 act)"]), "b"]
             for r in runs["int_kernels.json"]["rows"] if r["tokens"] == 1]
    body += ["", "One linear at decode (one token), ms per call:", ""]
    body += table(["weight", "dense bf16", "PyTorch int4pack", "slmkit native int4", "PyTorch / slmkit", "run"], layer)
    intro = [f"Batch 1, greedy, {a['prompt']}-token prompt, {a['new_tokens']} new tokens, median of {a['repeats']}; "
             f"int4 = RTN W4 g{a['group_size']} symmetric."]
    return section("Quantized prefill and decode speed", intro, body, runs, "kernels-and-speed")


def pruning() -> Section:
    runs = Runs("prune_smollm2_s12.json", "prune_smollm2_peer2.json", "prune_smollm2_wanda24_b1.json",
                "prune_smollm2_24_damp001_b1.json", "prune_smollm2_peer3.json", "prune_smollm2_bf16calib.json",
                "prune_smollm2_rowglobal_f32stats.json", "prune_qwen05b_rowglobal_f32stats.json",
                "prune_qwen05b_24.json")
    mix = "[embedded@0.5,self@0.5]"
    pairs = [("Wanda 50%, float32 passes", "prune_smollm2_s12.json", f"wanda 0.5 {mix}", "prune_smollm2_peer2.json",
              f"llm-compressor wanda 0.5 {mix}"),
             ("SparseGPT 50%, the peer's settings (damp 0.01, block masks), float32 passes", "prune_smollm2_s12.json",
              f"sparsegpt 0.5 {mix}", "prune_smollm2_peer2.json", f"llm-compressor sparsegpt 0.5 {mix}"),
             ("Wanda 2:4, float32 passes, batch 1 (a test run overlapped slmkit's)", "prune_smollm2_wanda24_b1.json",
              f"wanda 2:4 {mix} batch 1", "prune_smollm2_peer2.json", f"llm-compressor wanda 2:4 {mix}"),
             ("SparseGPT 2:4, the peer's settings, batch 1", "prune_smollm2_24_damp001_b1.json",
              f"sparsegpt 2:4 {mix} damp 0.01 batch 1", "prune_smollm2_peer3.json",
              f"llm-compressor sparsegpt 2:4 {mix}")]
    out = []
    for label, n1, k1, n2, k2 in pairs:
        o, p = runs[n1]["rows"][k1], runs[n2]["rows"][k2]
        out.append([label, f(o["ppl"]["in"]), f(o["ppl"]["out"]), f(p["ppl"]["in"]), f(p["ppl"]["out"]),
                    pct(o["ppl"]["in"], p["ppl"]["in"]), pct(o["ppl"]["out"], p["ppl"]["out"]),
                    x(o["seconds"] / p["seconds"]), f"{runs.key(n1)}, {runs.key(n2)}"])
    body = table(["SmolLM2-135M", "slmkit pydoc", "slmkit Austen", "peer pydoc", "peer Austen", "pydoc diff",
                  "Austen diff", "time vs peer", "runs"], out)
    picks = [("SmolLM2-135M, 50%", "Wanda", "prune_smollm2_bf16calib.json", f"wanda 0.5 {mix} calib bfloat16"),
             ("", "**SparseGPT (default: row_global masks, damp 0.1)**", "prune_smollm2_rowglobal_f32stats.json",
              f"sparsegpt 0.5 {mix} calib bfloat16"),
             ("Qwen2.5-Coder-0.5B, 50%", "**SparseGPT (default)**", "prune_qwen05b_rowglobal_f32stats.json",
              f"sparsegpt 0.5 {mix} calib bfloat16"),
             ("Qwen2.5-Coder-0.5B, 2:4", "Wanda", "prune_qwen05b_24.json", f"wanda 2:4 {mix} calib bfloat16"),
             ("", "SparseGPT (bf16 Hessians: before the statistics fix)", "prune_qwen05b_24.json",
              f"sparsegpt 2:4 {mix} calib bfloat16")]
    mine = []
    for model, label, name, key in picks:
        rows = runs[name]["rows"]
        (a, b), (a0, b0) = ppl(rows[key]), ppl(rows["dense (fp32)"])
        mine.append([model, label, f(a), x(a / a0), f(b), x(b / b0), f(rows[key]["seconds"], 0), runs.key(name)])
    body += ["", "slmkit's defaults (bf16 calibration passes, float32 statistics):", ""]
    body += table(["model, sparsity", "method", "ppl pydoc", "vs dense", "ppl Austen", "vs dense", "seconds", "run"],
                  mine, left=2)
    a = runs["prune_smollm2_s12.json"]["args"]
    version = runs["prune_smollm2_peer3.json"]["rows"][pairs[-1][4]]["peer"]["versions"]["llmcompressor"]
    intro = [f"Unstructured 50% and 2:4 sparsity, calibrated on {CALIB[a['calib']]} ({a['calib_n']} x {a['calib_len']} "
             f"tokens, one draw per model; llm-compressor {version}, in its own venv, gets the same ids); "
             f"{a['eval_tokens']:,} tokens of each text. Each row pairs slmkit and the peer on the same settings; "
             "they ran separately (the runs named), each alone on the same kind of machine. Diff = slmkit / peer - 1."]
    return section("Pruning beside llm-compressor", intro, body, runs, "pruning")


def structured() -> Section:
    name = "prune_smollm2_s12.json"
    runs = Runs(name)
    d = runs[name]
    dense, rows = d["dense"], d["rows"]
    out = [["dense", f"{dense['params'] / 1e6:.1f}M", x(1), f(rows["dense (fp32)"]["ppl"]["in"]),
            f(rows["dense (fp32)"]["ppl"]["out"]), f(dense["speed"]["decode_tok_s"], 1), x(1), x(1)]]
    for label, key in [("depth -25% (whole decoder layers, by block influence)", "depth -25%"),
                       ("width -25% (MLP channels and KV groups)", "width -25%")]:
        r = rows[key]
        out.append([label, f"{r['params'] / 1e6:.1f}M", x(r["disk_ratio"]), f(r["ppl"]["in"]), f(r["ppl"]["out"]),
                    f(r["speed"]["decode_tok_s"], 1), x(r["decode_speedup"]), x(r["prefill_speedup"])])
    body = table(["SmolLM2-135M", "params", "disk vs dense", "ppl pydoc", "ppl Austen", "decode tok/s",
                  "decode vs dense", "prefill vs dense"], out)
    s = dense["speed"]["runs"][0]
    intro = [f"Structured pruning to {d['args']['structured_target']:.0%} fewer parameters, before any recovery; "
             "the pruned models are standard checkpoints. Speed: dense and pruned alternated in one process, "
             f"median of {dense['speed']['rounds']} rounds, {s['prompt_tokens']}-token prompt "
             f"({s['prefill_dtype']}), {s['new_tokens']} new tokens ({s['decode_dtype']})."]
    return section("Structured pruning", intro, body, runs, "pruning")


def lowrank() -> Section:
    name = "distill_smollm2_lowrank.json"
    runs = Runs(name)
    d = runs[name]
    lr, a = d["lowrank"], d["args"]
    out = [["dense", f"{lr['svd']['params_before'] / 1e6:.1f}M", f(d["dense_ppl"]["in"]), f(d["dense_ppl"]["out"]), ""]]
    for label, key in [("SVD", "svd"), ("ASVD (activation-aware)", "asvd")]:
        r = lr[key]
        out.append([label, f"{r['params_after'] / 1e6:.1f}M", f(r["ppl"]["in"], 0), f(r["ppl"]["out"], 0),
                    f(r["seconds"], 0)])
    body = table(["SmolLM2-135M", "params", "ppl pydoc", "ppl Austen", "seconds"], out)
    body += ["", "Both factored models are destroyed; ranks uniform across layers and no recovery training."]
    intro = [f"Every decoder linear factored to the rank that keeps {a['lowrank_keep']:.0%} of its parameters; ASVD "
             f"scales by activations from {a['calib_n']} x {a['seq_len']} pydoc tokens; {a['eval_tokens']:,} tokens "
             "of each text."]
    return section("Low-rank factorisation", intro, body, runs, "low-rank")


GGUF_ORDER = ["source bf16", "llama Q8_0", "slmkit gptq:q8_0", "slmkit rtn:q8_0", "llama Q4_K_M", "llama Q4_K_M imatrix",
              "slmkit gptq:bpw-5.534375", "slmkit gptq:like-Q4_K_M", "slmkit gptq:q5_0",
              "slmkit gptq:q5_0+down=q6_k+gate=q4_0", "slmkit gptq:q4_0+down=q8_0",
              "llama Q4_0", "slmkit gptq:q4_0", "slmkit rtn:q4_0"]
GGUF_LABELS = {"source bf16": "source (bf16 GGUF)", "slmkit gptq:q8_0": "**slmkit GPTQ onto Q8_0**",
               "slmkit gptq:q5_0": "slmkit GPTQ onto Q5_0", "slmkit gptq:q4_0": "**slmkit GPTQ onto Q4_0**",
               "slmkit rtn:q4_0": "slmkit RTN onto Q4_0",
               "slmkit rtn:q8_0": "**slmkit RTN onto Q8_0** (extreme on level -128)",
               "slmkit gptq:bpw-5.534375": "**slmkit GPTQ, types by sensitivity (5.53 bits/weight)**",
               "slmkit gptq:like-Q4_K_M": "slmkit GPTQ on llama.cpp's Q4_K_M types",
               "slmkit gptq:q4_0+down=q8_0": "slmkit GPTQ onto Q4_0, ffn_down Q8_0",
               "slmkit gptq:q5_0+down=q6_k+gate=q4_0": "slmkit GPTQ onto Q5_0, ffn_down Q6_K, ffn_gate Q4_0"}
GGUF_SOURCES = {"gguf_compare_smollm2.json": "SmolLM2-135M (on a Q4_1 grid)",
                "gguf_compare_smollm2_rotated.json": "SmolLM2-135M, off-grid (rotated)",
                "gguf_compare_smollm2_noised.json": "SmolLM2-135M, off-grid (noised)"}


def gguf_table(d: dict, title: str) -> list[str]:
    rows = d["rows"]
    texts = list(rows["source bf16"]["ppl"])
    src = rows["source bf16"]["ppl"]
    out = []
    for key in [k for k in GGUF_ORDER if k in rows] + [k for k in rows if k not in GGUF_ORDER]:
        r = rows[key]
        cells = []
        for t in texts:
            cells += [f(r["ppl"][t]), "-" if key == "source bf16" else pct(r["ppl"][t], src[t])]
        speed = r.get("decode_tok_s")
        out.append([GGUF_LABELS.get(key, key), f(r["bytes"] / 1e6, 1), *cells,
                    f(speed, 1) if speed else "-"])
    head = [title, "MB"] + [h for t in texts for h in (f"ppl {t}", "rise")] + ["decode tok/s"]
    return table(head, out)


def gguf_files() -> Section:
    names = [n for n in GGUF_SOURCES if (RESULTS / n).exists()]
    runs = Runs(*names)
    d = runs[names[0]]
    body = []
    for n in names:
        body += gguf_table(runs[n], GGUF_SOURCES[n] + (f" [{runs.key(n)}]" if len(names) > 1 else "")) + [""]
    intro = [f"Every file measured by llama.cpp itself: `llama-perplexity` (windows of {d['ctx']} tokens, the "
             f"second half of each scored, the first {d['chunks']} windows of each text) and `llama-bench` "
             f"(tg128, {d['threads']} threads). llama.cpp's rows come from `llama-quantize` of the source; "
             "the imatrix row from `llama-imatrix` on slmkit's own calibration text. slmkit's rows are "
             "quantized onto GGUF block grids and written unchanged, the tied embedding/head table as Q8_0; "
             "\"types by sensitivity\" chose each linear's type (`--gguf-bpw`) within the bytes llama.cpp's "
             "Q4_K_M spends on its linears. The shared SmolLM2 is a dequantized Q4_1 GGUF (no row uses Q4_1); "
             "the off-grid copies (`benchmarks/offgrid_source.py`) have their residual stream rotated by a random "
             "orthogonal matrix (same outputs, norms folded, the head untied: one more table in every file), "
             "or Gaussian noise of half a Q4_1 step on every linear (half a Q8_0 step on the table), which "
             "also degrades the model. Decode tok/s: the median of the runs, the files "
             "interleaved; files of the same tensor types run the same kernels, so their differences are "
             "the VM's run-to-run noise."]
    return section("GGUF: slmkit's calibrated files beside llama.cpp's quantizations", intro, body[:-1], runs, "gguf")


SECTIONS = [gptq_peer, awq_peer, quant_defaults, gguf_files, quant_speed, pruning, structured, lowrank]
