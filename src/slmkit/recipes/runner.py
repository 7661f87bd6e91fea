"""Run a recipe: each stage reads the previous stage's model folder, writes its own
(`RUN/NN-kind/model`, float weights in bfloat16, with slmkit.json) and its measurements (`RUN/NN-kind/stage.json`, written
last, so its presence means "done").

Re-runs: a stage whose key — a hash of its options, the calibration/evaluation settings and the
previous stage's key — matches its stage.json is skipped; a changed stage and everything after
it run again. An interrupted stage has no stage.json and runs again (training stages continue
from their checkpoint in RUN/NN-kind/train). A failing stage leaves the earlier stages intact
and raises an error naming the stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from slmkit.compress.api import STEP_KINDS
from slmkit.data.chunk import token_stream
from slmkit.data.sources import TextData, load_text
from slmkit.distill import Distill
from slmkit.distill.teacher_data import blackbox_data, cached_data
from slmkit.errors import SlmkitError
from slmkit.eval.mc import MCConfig, load_items, multiple_choice
from slmkit.eval.memory import PeakRSS, disk_bytes, param_count
from slmkit.eval.perplexity import PerplexityConfig, perplexity
from slmkit.eval.speed import SpeedConfig, alternating, speed
from slmkit.files import write_text_atomic
from slmkit.generate.calibration import build_calibration
from slmkit.models import load, save
from slmkit.models.default import default_gguf
from slmkit.models.gguf_export import export_gguf
from slmkit.models.load import resolve_source
from slmkit.models.loads import where_it_loads
from slmkit.recipes.gguf_rows import gguf_rows
from slmkit.recipes.report import write_report
from slmkit.recipes.schema import Recipe, Stage, stage_configs
from slmkit.recipes.steps import apply_step, check_step
from slmkit.train import CausalLM, train
from slmkit.train.lora import LoRAConfig, add_lora, merge_lora
from slmkit.train.sft import lm_batches, training_batches

STAGE_FILE = "stage.json"
SAVE_DTYPE = "bfloat16"   # stage checkpoints; integer weights and their grids are not affected


def _jsonable(x):
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def stage_key(stage: Stage, recipe: Recipe, previous: str) -> str:
    blob = json.dumps({"kind": stage.kind, "options": stage.options, "previous": previous,
                       "calibration": dataclasses.asdict(recipe.calibration),
                       "evaluation": dataclasses.asdict(recipe.evaluation)},
                      sort_keys=True, default=_jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_dirs(recipe: Recipe, run: Path) -> list[Path]:
    return [run / f"{i:02d}-{s.kind}" for i, s in enumerate(recipe.stages, 1)]


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _load(source: str, dtype: str = "float32"):
    return load(source, dtype)


def _calib(recipe: Recipe, run: Path):
    """The run's calibration ids: built once, from the source model (its self-generated rows
    included), saved in RUN/calibration-<key>.pt and reused by every calibrated stage — so the
    stages see the same data, and a pruned model does not write its own calibration text."""
    c = recipe.calibration
    key = hashlib.sha256(json.dumps([recipe.model, dataclasses.asdict(c)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:12]
    path = run / f"calibration-{key}.pt"
    if path.exists():
        return torch.load(path)
    model, tok = _load(recipe.model)
    ids = build_calibration(model, tok, c.spec, n=c.n, length=c.length, seed=c.seed)
    del model
    tmp = path.with_suffix(".tmp")
    torch.save(ids, tmp)
    tmp.replace(path)
    return ids


# ---- stage bodies: (model, tok, stage, recipe, folder) -> (model, tok, info) -------------------

def _compress(model, tok, stage, recipe, folder):
    step = stage_configs(stage)["step"]
    check_step(step, model)
    calib = _calib(recipe, folder.parent) if step.needs_calibration else None
    return model, tok, apply_step(model, step, calib)


def _train(model, tok, stage, recipe, folder):
    cfgs = stage_configs(stage)
    d = cfgs["data"]
    held = lm_batches(tok, load_text(d["eval_data"]), d["seq_len"]) if d["eval_data"] else None
    if stage.kind == "distill" and cfgs["objective"] != "logits":
        data, objective, info = _teacher_written(model, tok, cfgs, recipe, folder)
    else:
        data = training_batches(tok, data=None if d["sft"] else d["data"], sft=d["sft"],
                                seq_len=d["seq_len"], max_rows=d["max_rows"])
        objective, info = CausalLM(), {}
        if stage.kind == "distill":
            teacher, t_tok = _load(_teacher(cfgs, recipe))
            objective = Distill(teacher, cfgs["kd"], model, student_tokenizer=tok, teacher_tokenizer=t_tok)
    target = model
    if stage.kind == "finetune" and cfgs.get("lora"):
        target = add_lora(model, LoRAConfig(**cfgs["lora"]) if isinstance(cfgs["lora"], dict) else None)
    summary = train(target, objective, data, cfgs["train"], folder / "train", eval_data=held)
    if target is not model:
        model = merge_lora(target)
    return model, tok, {"train": summary, **info}


def _teacher(cfgs: dict, recipe: Recipe) -> str:
    return recipe.model if cfgs["teacher"] == "source" else cfgs["teacher"]


def _teacher_written(model, tok, cfgs: dict, recipe: Recipe, folder: Path):
    """(batches, objective, info) of a black-box or cached distillation stage: the teacher writes
    the training data first (the same functions as `slmkit distill`), then leaves memory."""
    d = cfgs["data"]
    teacher, t_tok = _load(_teacher(cfgs, recipe))
    if cfgs["objective"] == "blackbox":
        data, counts = blackbox_data(teacher, t_tok, tok, cfgs["blackbox"], d["seq_len"],
                                     folder / "teacher_answers.jsonl", _teacher(cfgs, recipe))
        return data, CausalLM(), {"answers": counts}
    text = training_batches(tok, data=d["data"], sft=None, seq_len=d["seq_len"],
                            max_rows=d["max_rows"]) if cfgs["cached_text"] else None
    c = cfgs["cached"]
    data, gen = cached_data(teacher, t_tok, tok, c, d["seq_len"], text)
    return data, CausalLM(soft_weight=c.soft_weight), {"teacher_rows": gen}


STAGE_FUNCTIONS = {**{kind: _compress for kind in STEP_KINDS}, "distill": _train, "finetune": _train}


def _model_stage(stage: Stage, current: str, recipe: Recipe, folder: Path) -> dict:
    """A stage that changes the model: apply it, write RUN/NN-kind/model in bf16 (what one ships;
    sizes compare with the bf16 source), and measure it exactly as written."""
    model, tok = _load(current)
    model, tok, info = STAGE_FUNCTIONS[stage.kind](model, tok, stage, recipe, folder)
    model.to(getattr(torch, SAVE_DTYPE))
    out = save(model, tok, folder / "model", {"recipe_stage": stage.kind}, overwrite=True)
    model.float()
    return {"output": str(out), "info": info, "metrics": measure(model, tok, recipe, out)}


def _eval_stage(stage: Stage, current: str, recipe: Recipe, folder: Path) -> dict:
    """An eval stage: measure the input as it is."""
    model, tok = _load(current)
    out = Path(current)
    return {"output": current, "info": {}, "metrics": measure(model, tok, recipe, out if out.is_dir() else None)}


# ---- measurement ------------------------------------------------------------------------------

def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


IF_PRESENT = "if-present:"


def present(spec: str | None) -> str | None:
    """An evaluation text/MC spec, or None for an `if-present:` path that does not exist here
    (data a shipped recipe uses where available, e.g. ../shared/data next to the repository)."""
    if spec is None or not spec.startswith(IF_PRESENT):
        return spec
    path = spec[len(IF_PRESENT):]
    return path if Path(path).exists() else None


def measure(model, tok, recipe: Recipe, folder: Path | None) -> dict:
    """Per-stage metrics: size, perplexity (protocol (i) on every text, (ii) on the first), MC
    accuracy, decode/prefill speed."""
    ev = recipe.evaluation
    out: dict = {"params": param_count(model)}
    if folder is not None:
        out["disk_mb"] = _folder_bytes(folder) / 2 ** 20
    out.update(quality(model, tok, recipe))
    sp = speed(model, tok, SpeedConfig(prompt_tokens=ev.speed_prompt, new_tokens=ev.speed_new_tokens,
                                       repeats=ev.speed_repeats))
    out["speed"] = {k: sp[k] for k in ("prefill_tok_s", "decode_tok_s") if k in sp}
    return out


def quality(model, tok, recipe: Recipe, rolling: bool = True, mc: bool = True) -> dict:
    """{"ppl": per text, "mc": accuracy} on the recipe's evaluation data: protocol (i) on every
    text, (ii) on the first (with `rolling`). `model` is a PyTorch model or a GGUF file in
    llama.cpp (`slmkit.runtime.llamacpp.LlamaCppModel`)."""
    ev = recipe.evaluation
    out: dict = {"ppl": {}}
    for i, spec in enumerate(t for t in map(present, ev.texts) if t):
        data = load_text(spec)
        if ev.ppl_tokens:
            data = TextData(f"{data.name}[:{ev.ppl_tokens}]", [tok.decode(token_stream(tok, data)[: ev.ppl_tokens])])
        protocols = ["window", "rolling"] if (i == 0 and ev.rolling and rolling) else ["window"]
        r = perplexity(model, tok, data, PerplexityConfig(protocols=protocols))
        out["ppl"][spec] = {"window": r["window"]["token_perplexity"]}
        if "rolling" in r:
            out["ppl"][spec].update({"word_ppl": r["rolling"]["word_perplexity"],
                                     "bits_per_byte": r["rolling"]["bits_per_byte"]})
    if mc and present(ev.mc):
        r = multiple_choice(model, tok, load_items(present(ev.mc), ev.mc_limit), MCConfig(path=present(ev.mc)))
        out["mc"] = {"acc": r["acc"], "acc_norm": r["acc_norm"]}
    return out


# ---- the run ----------------------------------------------------------------------------------

def _check_source(source: str) -> None:
    """A model source resolves (the embedded default: its package is installed; not converted here)."""
    if source == "default":
        default_gguf()
    else:
        resolve_source(source)


def check_recipe(recipe: Recipe, run: str | Path) -> None:
    """Everything a run needs that can be checked without loading a model: the source and every
    teacher resolve, the calibration sources and evaluation files exist, the run folder can be
    made. `plan` (`--dry-run`) and `run_recipe` call it first."""
    _check_source(recipe.model)
    if any(STAGE_FUNCTIONS.get(s.kind) is _compress and stage_configs(s)["step"].needs_calibration
           for s in recipe.stages):
        recipe.calibration.check()
    for stage in recipe.stages:
        teacher = stage_configs(stage)["teacher"] if stage.kind == "distill" else "source"
        if teacher != "source":
            _check_source(teacher)
    for spec in [*recipe.evaluation.texts, recipe.evaluation.mc]:
        if spec and not spec.startswith(IF_PRESENT) and spec not in ("default", "default:eval") \
                and not spec.startswith("hf:") and not Path(spec).expanduser().exists():
            raise SlmkitError(f"evaluation file {spec} does not exist (write `if-present:{spec}` "
                              "to measure without it where it is missing)")
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise SlmkitError(f"run folder {run} is a file; choose another --out")


def plan(recipe: Recipe, run: Path, model_params: int | None = None) -> list[dict]:
    """What a run would do: per stage, whether it is already done, and a rough time/memory
    estimate from the parameter count (calibration: two fp32 layer passes over the calibration
    tokens; training: forward + backward (+ teacher forward) per token; ~100 GFLOP/s on 2 AVX2
    cores; memory: fp32 weights, + grads and AdamW state when training, + a teacher)."""
    check_recipe(recipe, run)
    previous, rows = "source", []
    flops = 100e9
    p = model_params or 135e6
    for stage, folder in zip(recipe.stages, stage_dirs(recipe, run)):
        key = stage_key(stage, recipe, previous)
        done = (folder / STAGE_FILE).exists() and json.loads((folder / STAGE_FILE).read_text()).get("key") == key
        calib_tokens = recipe.calibration.n * recipe.calibration.length
        if stage.kind in ("distill", "finetune"):
            c = stage_configs(stage)["train"]
            tokens = c.steps * c.batch_size * c.grad_accum * stage_configs(stage)["data"]["seq_len"]
            seconds = tokens * p * (6 + (2 if stage.kind == "distill" else 0)) / flops
            mem = p * 4 * (4 + (1 if stage.kind == "distill" else 0))
        elif stage.kind in STEP_KINDS:
            cheap = not stage_configs(stage)["step"].needs_calibration
            seconds = 0 if cheap else 2 * 2 * p * calib_tokens / flops
            mem = p * 4 * 1.5
        else:
            seconds, mem = 30, p * 4
        rows.append({"stage": folder.name, "key": key, "done": done, "est_seconds": round(seconds),
                     "est_memory_gb": round(mem / 2 ** 30, 1)})
        previous = key
    return rows


def run_recipe(recipe: Recipe, run: str | Path, *, log=print) -> dict:
    """Run (or resume) `recipe` into the folder `run`; returns the report dict."""
    check_recipe(recipe, run)
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    (run / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2, default=str))
    for spec in [*recipe.evaluation.texts, recipe.evaluation.mc]:
        if spec and present(spec) is None:
            log(f"evaluation: {spec[len(IF_PRESENT):]} does not exist here; measured without it")
    source_file = run / "00-source.json"
    results = []
    if source_file.exists() and json.loads(source_file.read_text()).get("model") == recipe.model:
        results.append(json.loads(source_file.read_text()))
    else:
        log(f"[source] measuring {recipe.model}")
        model, tok = _load(recipe.model)
        t0 = time.perf_counter()
        m = measure(model, tok, recipe, None)
        db = disk_bytes(model)
        m["disk_mb"] = None if db is None else db / 2 ** 20
        results.append({"stage": "00-source", "model": recipe.model, "metrics": m,
                        "seconds": time.perf_counter() - t0})
        _write_json(source_file, results[-1])
        del model
    previous, current = "source", recipe.model
    for i, (stage, folder) in enumerate(zip(recipe.stages, stage_dirs(recipe, run)), 1):
        key = stage_key(stage, recipe, previous)
        done_file = folder / STAGE_FILE
        if done_file.exists():
            rec = json.loads(done_file.read_text())
            if rec.get("key") == key:
                log(f"[{folder.name}] unchanged, skipped")
                results.append(rec)
                previous, current = key, rec["output"]
                continue
            done_file.unlink()  # options or an earlier stage changed: redo
        log(f"[{folder.name}] running")
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            with PeakRSS() as mem:
                rec = STAGE_RUNNERS[stage.kind](stage, current, recipe, folder)
        except SlmkitError as e:
            raise SlmkitError(f"stage {i} ({stage.kind}, {folder.name}) failed: {e}; earlier stages "
                              f"are kept in {run} and re-running resumes here") from e
        rec.update({"stage": folder.name, "kind": stage.kind, "options": stage.options, "key": key,
                    "seconds": time.perf_counter() - t0, "peak_rss_mb": mem.peak_bytes / 2 ** 20,
                    "loads": where_it_loads(rec["output"])})
        _write_json(done_file, rec)
        results.append(rec)
        previous, current = key, rec["output"]
    report = {"recipe": recipe.name, "model": recipe.model, "stages": results}
    final = next((r for r in reversed(results[1:]) if Path(r["output"]).is_dir()), None)
    if final is not None:
        log(f"[speed] source and {final['stage']} side by side")
        report["side_by_side"] = {"stage": final["stage"],
                                  **side_by_side_speed(recipe.model, final["output"], recipe)}
    if recipe.evaluation.llama_cpp_rounds and any(r.get("kind") == "export" for r in results):
        report["llama_cpp"] = gguf_rows(recipe, run, results, quality, log,
                                        rounds=recipe.evaluation.llama_cpp_rounds)
    write_report(report, run)
    return report


def side_by_side_speed(source: str, final: str, recipe: Recipe, rounds: int = 2) -> dict:
    """Decode and prefill speed of the source and the final model, measured alternately in this
    process (source, final, source, final, ...; best of `rounds` each). The per-stage speeds in the
    report come from different moments, and from earlier invocations when stages were skipped,
    so only this ratio is a like-for-like comparison."""
    ev = recipe.evaluation
    cfg = SpeedConfig(prompt_tokens=ev.speed_prompt, new_tokens=ev.speed_new_tokens, repeats=1)
    best = alternating({"source": _load(source), "final": _load(final)}, cfg, rounds, stat="max")
    best = {k: {m: v[m] for m in ("prefill_tok_s", "decode_tok_s") if v.get(m)} for k, v in best.items()}
    out = {"rounds": rounds, "source": best["source"], "final": best["final"]}
    for k, label in (("decode_tok_s", "decode_ratio"), ("prefill_tok_s", "prefill_ratio")):
        if best["source"].get(k) and best["final"].get(k):
            out[label] = best["final"][k] / best["source"][k]
    return out


def _export(stage: Stage, current: str, recipe: Recipe, folder: Path) -> dict:
    """An export stage: the input as a GGUF file of the stage's type (linears quantized onto a
    GGUF block grid keep their integers and scales; other quantized ones are requantized to it)."""
    t = stage_configs(stage)["type"]
    model, tok = _load(current)
    path = export_gguf(model, tok, folder / f"model-{t}.gguf", t, overwrite=True)
    return {"output": str(path), "info": {"type": t},
            "metrics": {"params": sum(p.numel() for p in model.parameters()),
                        "disk_mb": path.stat().st_size / 2 ** 20}}


# every stage kind of the schema (`schema.STAGE_KINDS`) -> (stage, input, recipe, folder) -> record
STAGE_RUNNERS = {**{kind: _model_stage for kind in STAGE_FUNCTIONS}, "export": _export, "eval": _eval_stage}
