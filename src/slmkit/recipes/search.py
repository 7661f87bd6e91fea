"""`slmkit shrink MODEL --budget size=0.35x`: the budgeted search over calibrated GGUFs.

Candidates are GPTQ onto GGUF block grids at a ladder of average bits per weight for the linears
(`LADDER`), each linear's type chosen by measured sensitivity (`slmkit.compress.allocate`; one
sensitivity pass serves every rung). The search, in RUN:

1. the source as a bf16 GGUF and llama.cpp's own Q8_0 / Q4_K_M / Q4_0 of it (`llama.cpp/`);
2. the calibration set and the sensitivity table (`sensitivity.json`), once;
3. cheap scores for every rung: its round-to-nearest GGUF (`cheap/`: the same tensor types, so the
   same file size and decode speed as its GPTQ version) measured by llama.cpp for size, decode
   tok/s and perplexity on the first `cheap_tokens` tokens of the first evaluation text;
4. the `full` most promising rungs within the budget (by the predicted loss of their types) run
   fully: GPTQ, the GGUF export, the whole evaluation (perplexity on every text, MC accuracy) and
   decode speed taken in turn with the source and llama.cpp's files (`full/`);
5. the Pareto front of the fully measured candidates (size, decode speed, the worse ppl rise of
   the texts), the chosen one (`budget.choose`) marked and copied to RUN/model.gguf; every
   measurement in `search.json`, the tables in `search.md`.

Every step writes its result before the next starts, and a re-run resumes where one stopped.
Measuring needs llama.cpp (`slmkit[llamacpp]`): checked before any work.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.compress import GPTQConfig, RTNConfig, quantize
from slmkit.compress.allocate import DEFAULT_TYPES, choose, predicted_losses
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.eval.perplexity import default_window
from slmkit.files import write_text_atomic
from slmkit.models import load, save
from slmkit.models.gguf_export import export_gguf
from slmkit.recipes.budget import Budget, Candidate, pareto_front
from slmkit.recipes.budget import choose as choose_candidate
from slmkit.recipes.gguf_rows import SOURCE, measure_files, reference_files
from slmkit.recipes.schema import Calibration, Evaluation, Recipe
from slmkit.runtime import llamacpp

LADDER = (4.5, 5.0, 5.5, 6.0, 6.5, 7.5, 8.5)


@dataclass
class SearchConfig:
    """What the search tries and how much it measures."""

    ladder: tuple[float, ...] = LADDER      # average bits per weight of the linears, per candidate
    full: int = 2                           # candidates run fully (GPTQ + the whole evaluation)
    cheap_tokens: int = 2048                # tokens of the first text the cheap scores read
    rounds: int = 3                         # decode rounds, the files taken in turn
    calibration: Calibration = field(default_factory=lambda: Calibration(spec="embedded@0.5,self@0.5", n=64))
    evaluation: Evaluation = field(default_factory=lambda: Evaluation(
        texts=["default", "if-present:../shared/data/austen_emma.txt"], ppl_tokens=12800,
        mc="if-present:../shared/data/wordnet_mc_dev.jsonl", mc_limit=300))


def search(source: str, budget: Budget, run: str | Path, cfg: SearchConfig | None = None, *,
           log=print) -> dict:
    """Run (or resume) the search for `source` within `budget` into `run`; returns search.json's dict."""
    from slmkit.recipes.runner import _calib, quality

    cfg = cfg or SearchConfig()
    reason = llamacpp.missing()
    if reason is not None:
        raise SlmkitError(reason.replace("llama.cpp rows skipped", "the budget search measures every "
                                         "candidate in llama.cpp") + "; or run a recipe without --budget")
    if not cfg.ladder or cfg.full < 1:
        raise SlmkitError("the search needs at least one rung and one full candidate")
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(name="search", model=source, stages=[], calibration=cfg.calibration,
                    evaluation=cfg.evaluation, path=None)
    state_file = run / "search.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    state.update(source=source, budget=str(budget))

    def save_state() -> None:
        write_text_atomic(state_file, json.dumps(state, indent=2) + "\n")

    model, tok = load(source, "float32")
    window = default_window(model)   # the windows slmkit's own evaluation uses
    files = reference_files(model, tok, run / "llama.cpp", log)
    targets = all_targets(model)
    weights = sum(t.weight().numel() for t in targets)
    calib = _calib(recipe, run)
    if "sensitivity" not in state:
        log("[search] measuring each linear's sensitivity to each block type")
        state["sensitivity"] = predicted_losses(model, calib, targets, DEFAULT_TYPES)
        save_state()
    options = {n: {t: tuple(v) for t, v in o.items()} for n, o in state["sensitivity"].items()}

    rungs = state.setdefault("rungs", {})
    for bpw in cfg.ladder:
        name = f"bpw-{bpw:g}"
        if name in rungs and "cheap" in rungs[name]:
            continue
        alloc = choose(options, int(bpw * weights / 8))
        path = run / "cheap" / f"{name}.gguf"
        if not path.exists():
            log(f"[search] {name}: round-to-nearest GGUF for the cheap scores")
            cheap_model = quantize(copy.deepcopy(model), RTNConfig(overrides={
                n: {"gguf_type": t} for n, t in alloc.types.items()}))
            path.parent.mkdir(exist_ok=True)
            export_gguf(cheap_model, tok, path, "q8_0")
            del cheap_model
        rungs[name] = {"bpw": bpw, "types": alloc.types, "predicted_dl": alloc.predicted_dl,
                       "cheap": _cheap(path, files[SOURCE], tok, cfg, window)}
        save_state()
    bf16 = files[SOURCE].stat().st_size
    promising = _promising(rungs, budget, bf16, state.setdefault("source_cheap", _cheap(
        files[SOURCE], files[SOURCE], tok, cfg, window)), cfg.full)
    state["promising"] = promising
    save_state()
    if not promising:
        smallest = min(rungs.values(), key=lambda r: r["cheap"]["bytes"])["cheap"]
        raise SlmkitError(f"no candidate's cheap scores fit the budget {budget}: the smallest is "
                          f"{smallest['bytes'] / bf16:.2f}x the source's size and decodes "
                          f"{smallest['decode_tok_s'] / state['source_cheap']['decode_tok_s']:.2f}x as fast "
                          f"(every rung in {state_file}); loosen the budget")
    for name in promising:
        path = run / "full" / f"{name}.gguf"
        if not path.exists():
            log(f"[search] {name}: GPTQ onto the chosen block types")
            full = quantize(copy.deepcopy(model), GPTQConfig(overrides={
                n: {"gguf_type": t} for n, t in rungs[name]["types"].items()}, calib_dtype="auto"), calib)
            folder = save(full, tok, run / "full" / name, {"search": name}, overwrite=True)
            path.parent.mkdir(exist_ok=True)
            export_gguf(full, tok, path, "q8_0")
            del full
            rungs[name]["folder"] = str(folder)
            save_state()
        files[f"slmkit {name}"] = path
    del model
    rows = measure_files(files, tok, recipe, run / "llama.cpp" / "rows.json", quality, log,
                         cfg.rounds, window)
    state["rows"] = rows
    cands = [_candidate(label, row, rows[SOURCE]) for label, row in rows.items() if label.startswith("slmkit ")]
    state["front"] = [c.name for c in pareto_front(cands)]
    chosen = choose_candidate(cands, budget)
    state["chosen"] = chosen.name if chosen else None
    if chosen is not None:
        shutil.copyfile(files[chosen.name], run / "model.gguf.partial")
        (run / "model.gguf.partial").replace(run / "model.gguf")
    save_state()
    write_text_atomic(run / "search.md", search_markdown(state))
    return state


def _cheap(path: Path, source: Path, tok, cfg: SearchConfig, window: int) -> dict:
    """Size, decode tok/s and perplexity on the first `cheap_tokens` tokens of the first text."""
    from slmkit.data.chunk import token_stream
    from slmkit.data.sources import load_text
    from slmkit.recipes.runner import present

    text = present(cfg.evaluation.texts[0])
    ids = token_stream(tok, load_text(text))[: cfg.cheap_tokens].tolist()
    step = min(window, len(ids))
    with llamacpp.LlamaCppModel(path, n_ctx=step) as lm:
        scored = [lm.score(ids[b: b + step], 1) for b in range(0, len(ids) - 1, step) if len(ids[b: b + step]) > 1]
        speed = lm.decode_speed(ids[: cfg.evaluation.speed_prompt], cfg.evaluation.speed_new_tokens)
    nll = -sum(s[0] for s in scored) / sum(s[1] for s in scored)
    return {"bytes": path.stat().st_size, "ppl": math.exp(nll), "decode_tok_s": speed}


def _promising(rungs: dict, budget: Budget, bf16: int, source: dict, full: int) -> list[str]:
    """The rungs to run fully: within the budget's size limit, decode limit (5% slack: one cheap
    run) and twice its ppl-rise limit (round-to-nearest overstates GPTQ's rise), the `full` with
    the least predicted loss, or with only a ppl-rise limit, the `full` smallest."""
    ok = []
    for name, r in rungs.items():
        c = r["cheap"]
        if budget.size is not None and c["bytes"] / bf16 > budget.size:
            continue
        if budget.decode is not None and c["decode_tok_s"] / source["decode_tok_s"] < 0.95 * budget.decode:
            continue
        if budget.ppl_rise is not None and c["ppl"] / source["ppl"] - 1 > 2 * budget.ppl_rise:
            continue
        ok.append(name)
    if budget.size is None and budget.decode is None:
        return sorted(ok, key=lambda n: rungs[n]["cheap"]["bytes"])[:full]
    return sorted(ok, key=lambda n: rungs[n]["predicted_dl"])[:full]


def _candidate(label: str, row: dict, source: dict) -> Candidate:
    rise = max(row["ppl"][t]["window"] / source["ppl"][t]["window"] - 1 for t in source["ppl"])
    return Candidate(label, row["bytes"] / source["bytes"],
                     row["decode_tok_s"] / source["decode_tok_s"] if source.get("decode_tok_s") else None, rise)


def search_markdown(state: dict) -> str:
    """The search's tables: every rung's cheap scores, then the fully measured files."""
    out = [f"# Budget search: {state['source']} within {state['budget']}", "",
           "| rung | bits/weight | predicted dL | MB | cheap ppl | cheap decode tok/s | run fully |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in state["rungs"].items():
        c = r["cheap"]
        out.append(f"| {name} | {r['bpw']:g} | {r['predicted_dl']:.4f} | {c['bytes'] / 1e6:.1f} | "
                   f"{c['ppl']:.3f} | {c['decode_tok_s']:.1f} | {'yes' if name in state['promising'] else '-'} |")
    rows = state.get("rows", {})
    src = rows.get(SOURCE)
    if src:
        texts = list(src["ppl"])
        out += ["", "| GGUF file (llama.cpp) | MB | size | " + " | ".join(f"ppl {Path(t).name}" for t in texts) +
                " | MC acc | decode tok/s | decode | |", "|---|" + "---:|" * (len(texts) + 5) + "---|"]
        for label, row in rows.items():
            cells = [label, f"{row['bytes'] / 1e6:.1f}", f"{row['bytes'] / src['bytes']:.2f}x"]
            cells += [f"{row['ppl'][t]['window']:.3f} ({100 * (row['ppl'][t]['window'] / src['ppl'][t]['window'] - 1):+.1f}%)"
                      for t in texts]
            cells += [f"{row['mc']['acc']:.3f}" if "mc" in row else "-", f"{row['decode_tok_s']:.1f}",
                      f"{row['decode_tok_s'] / src['decode_tok_s']:.2f}x"]
            mark = "**chosen**" if label == state.get("chosen") else (
                "front" if label in state.get("front", []) else "")
            out.append("| " + " | ".join(cells + [mark]) + " |")
    if state.get("chosen") is None and rows:
        out += ["", f"No fully measured candidate meets {state['budget']}."]
    return "\n".join(out) + "\n"
