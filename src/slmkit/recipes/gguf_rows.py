"""llama.cpp beside every report (the optional extra `slmkit[llamacpp]`): the run's GGUF outputs
and llama.cpp's own quantizations of the same source, all measured by llama.cpp in this run.

The source is exported as a bf16 GGUF and quantized by llama.cpp (`LLAMA_TYPES`, as
`llama-quantize` makes them; the importance-matrix variant needs llama.cpp's `llama-imatrix` tool,
which the binding does not carry: `benchmarks/gguf_compare.py` measures it). Every file, the
source's included, gets the recipe's evaluation (perplexity on the same texts and windows, with
the source's tokenizer; MC accuracy), its size, and greedy decode tok/s on one prompt, the files
taken in turn over `rounds` rounds (the median kept), so the speeds compare like for like.
Results go to RUN/llama.cpp/rows.json after every file, and a re-run measures only what is missing.
Without the extra the section is one line saying how to get it.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from slmkit.data.chunk import token_stream
from slmkit.data.sources import load_text
from slmkit.eval.perplexity import default_window
from slmkit.files import write_text_atomic
from slmkit.models import load
from slmkit.models.gguf_export import export_gguf
from slmkit.runtime import llamacpp
from slmkit.runtime.llamacpp import LlamaCppModel

LLAMA_TYPES = ("Q8_0", "Q4_K_M", "Q4_0")
SOURCE = "source (bf16)"


def gguf_rows(recipe, run: Path, results: list[dict], quality, log, rounds: int = 3) -> dict:
    """{"rows": label -> {file, bytes, ppl, mc, decode_tok_s, decode_runs}} for the source, llama.cpp's
    quantizations and every export stage's GGUF in `results`, or {"skipped": reason}. `quality(model,
    tok, recipe)` is the recipe's evaluation (`runner.quality`)."""
    reason = llamacpp.missing()
    if reason is not None:
        log(reason)
        return {"skipped": reason}
    folder = run / "llama.cpp"
    model, tok = load(recipe.model, "float32")
    files = reference_files(model, tok, folder, log)
    window = default_window(model)   # the windows slmkit's own evaluation uses
    del model
    for r in results:
        if r.get("kind") == "export":
            files[f"slmkit {r['stage']}"] = Path(r["output"])
    # perplexity and speed; MC accuracy of every file would double the section's time (llama.cpp
    # scores one request per call), so a recipe's llama.cpp rows leave it out
    ev = recipe.evaluation
    if ev.llama_cpp_tokens is not None:
        recipe = replace(recipe, evaluation=replace(ev, ppl_tokens=ev.llama_cpp_tokens))
    rows = measure_files(files, tok, recipe, folder / "rows.json", quality, log, rounds, window, mc=False)
    return {"rows": rows, "rounds": rounds, "window": window, "ppl_tokens": recipe.evaluation.ppl_tokens}


def reference_files(model, tok, folder: Path, log) -> dict[str, Path]:
    """The source as a bf16 GGUF and llama.cpp's own quantizations of it (made once, in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {SOURCE: folder / "source-bf16.gguf"}
    if not files[SOURCE].exists():
        log("[llama.cpp] exporting the source as bf16 GGUF")
        export_gguf(model, tok, files[SOURCE], "bf16")
    for t in LLAMA_TYPES:
        files[f"llama.cpp {t}"] = folder / f"llama-{t}.gguf"
        if not files[f"llama.cpp {t}"].exists():
            log(f"[llama.cpp] quantizing the source to {t}")
            llamacpp.quantize_gguf(files[SOURCE], files[f"llama.cpp {t}"], t)
    return files


def measure_files(files: dict[str, Path], tok, recipe, state_file: Path, quality, log, rounds: int,
                  window: int, mc: bool = True) -> dict:
    """label -> {file, bytes, ppl, mc, decode_runs, decode_tok_s}: each file evaluated by llama.cpp
    (`quality`, on windows of `window` tokens), then greedy decode on one prompt with the files
    taken in turn over `rounds` rounds (median kept). Saved to `state_file` after every
    measurement; what it already holds for an unchanged file is kept."""
    rows: dict = json.loads(state_file.read_text())["rows"] if state_file.exists() else {}

    def save() -> None:
        write_text_atomic(state_file, json.dumps({"rows": rows}, indent=2) + "\n")

    for label, path in files.items():
        row = rows.get(label)
        if row is not None and row.get("bytes") == path.stat().st_size and "ppl" in row:
            continue
        log(f"[llama.cpp] evaluating {label}")
        with LlamaCppModel(path, n_ctx=window) as lm:
            rows[label] = {"file": str(path), "bytes": path.stat().st_size,
                           **quality(lm, tok, recipe, rolling=False, mc=mc)}
        save()
    ev = recipe.evaluation
    prompt = token_stream(tok, load_text("default"))[: ev.speed_prompt].tolist()
    for r in range(rounds):                            # every file once per round, in turn
        for label, path in files.items():
            runs = rows[label].setdefault("decode_runs", [])
            if len(runs) > r:
                continue
            with LlamaCppModel(path, n_ctx=len(prompt) + ev.speed_new_tokens) as lm:
                runs.append(lm.decode_speed(prompt, ev.speed_new_tokens))
            rows[label]["decode_tok_s"] = statistics.median(runs)
            save()
    return {label: rows[label] for label in files}


def gguf_markdown(section: dict) -> list[str]:
    """The report's llama.cpp table: per file its size, perplexity per text (and its rise over the
    source's bf16 GGUF), MC accuracy and decode speed (and its ratio to llama.cpp's Q4_K_M)."""
    if not section:
        return []
    if "skipped" in section:
        return ["", section["skipped"]]
    rows = section["rows"]
    src = rows.get(SOURCE, {})
    texts = list(src.get("ppl", {}))
    ref = rows.get("llama.cpp Q4_K_M", {}).get("decode_tok_s")
    head = ["GGUF file (measured by llama.cpp)", "MB", *[f"ppl {Path(t).name}" for t in texts], "MC acc",
            "decode tok/s", "vs Q4_K_M"]
    tokens = section.get("ppl_tokens")
    on = f"; perplexity on the first {tokens:,} tokens of each text" if tokens else ""
    out = ["", f"## llama.cpp side by side (decode: {section['rounds']} rounds in turn, median{on})", "",
           "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, row in rows.items():
        cells = [label, f"{row['bytes'] / 1e6:.1f}"]
        for t in texts:
            value, base = row["ppl"][t]["window"], src["ppl"][t]["window"]
            cells.append(f"{value:.3f} ({100 * (value / base - 1):+.1f}%)")
        cells.append(f"{row['mc']['acc']:.3f}" if "mc" in row else "-")
        speed = row.get("decode_tok_s")
        cells += [f"{speed:.1f}" if speed else "-", f"{speed / ref:.2f}x" if speed and ref else "-"]
        out.append("| " + " | ".join(cells) + " |")
    return out
