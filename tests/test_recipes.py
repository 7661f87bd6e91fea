"""Recipes: schema validation with file:line errors, every shipped recipe end to end on a tiny
model, skip/resume on re-runs, a failing stage that keeps earlier outputs, and the report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from slmkit.cli.main import main
from slmkit.errors import SlmkitError
from slmkit.recipes import load_recipe, parse_recipe, plan, run_recipe
from slmkit.recipes.schema import Calibration, Evaluation

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))
FAST_EVAL = Evaluation(texts=["default"], ppl_tokens=400, rolling=True, mc=None,
                       speed_prompt=8, speed_new_tokens=4, speed_repeats=1)
FAST_CALIB = Calibration(spec="embedded", n=4, length=64)


def test_shipped_recipes_are_valid():
    assert {p.stem for p in SHIPPED} >= {"default", "quantize-only", "sparse-2of4", "hub-model"}
    for p in SHIPPED:
        r = load_recipe(p)
        assert r.stages and r.name == p.stem


@pytest.mark.parametrize("text, match", [
    ("name: x\nstages:\n  - prune: {method: wanda, sparsty: 0.5}\n", r"<t>:3: stages\[0\].prune.sparsty: unknown option 'sparsty'"),
    ("name: x\nstages:\n  - squash: {}\n", r"<t>:3: stages\[0\].squash: unknown stage 'squash'; allowed: prune"),
    ("name: x\nstages:\n  - quantize: {method: gptq, bits: 9}\n", r"<t>:3: .*bits must be an integer in \[2, 8\]"),
    ("name: x\nstages:\n  - quantize: {method: fp4}\n", r"method 'fp4' unknown for quantize; allowed: rtn, gptq"),
    ("name: x\nstages: []\n", r"<t>:2: stages: needs a non-empty list"),
    ("name: x\nmodle: default\nstages:\n  - eval: {}\n", r"<t>:2: modle: unknown key 'modle'"),
    ("name: x\nevaluation: {ppl_tokenz: 5}\nstages:\n  - eval: {}\n", r"<t>:2: evaluation.ppl_tokenz: unknown option"),
    ("stages: [\n", r"<t>: not valid YAML"),
])
def test_validation_errors_name_the_line_key_and_allowed_values(text, match):
    with pytest.raises(SlmkitError, match=match):
        parse_recipe(text, "<t>")


def fast(recipe, model, llama_cpp_rounds: int | None = None):
    ev = FAST_EVAL if llama_cpp_rounds is None else dataclasses.replace(FAST_EVAL, llama_cpp_rounds=llama_cpp_rounds)
    return dataclasses.replace(recipe, model=str(model), evaluation=ev, calibration=FAST_CALIB)


def quantize_then_export(quantize: str, model, llama_cpp_rounds: int):
    text = f"name: t\nstages:\n  - quantize: {quantize}\n  - export: {{type: q8_0}}\n"
    return fast(parse_recipe(text, "t.yaml"), model, llama_cpp_rounds)


def shrink_steps(recipe):
    """Shipped training stages shortened for CI (the stage itself is unchanged)."""
    for s in recipe.stages:
        if s.kind in ("distill", "finetune"):
            s.options.update(steps=2, batch_size=2, seq_len=32, max_rows=8)
    return recipe


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_runs_end_to_end_on_a_tiny_model(path, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)   # shipped recipes name ../shared/data relative to the repository
    recipe = shrink_steps(fast(load_recipe(path), tiny_dir("llama")))
    report = run_recipe(recipe, tmp_path / "run", log=lambda m: None)
    assert [s["stage"] for s in report["stages"]][1:] == [f"{i:02d}-{s.kind}" for i, s in
                                                          enumerate(recipe.stages, 1)]
    for s in report["stages"][1:]:
        assert Path(s["output"]).exists()
        if s["kind"] != "export":
            assert s["metrics"]["ppl"]["default"]["window"] > 1
            # float weights on disk are bf16, so sizes compare with the bf16 source
            from safetensors import safe_open

            with safe_open(str(next(Path(s["output"]).glob("*.safetensors"))), "pt") as f:
                dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()
                          if not k.endswith("weight_scale")}   # quantization grids stay float32
            assert "F32" not in dtypes and "BF16" in dtypes, dtypes
    html = (tmp_path / "run" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    # the final model's speed against the source's, measured alternately at the end of the run
    sbs = report["side_by_side"]
    last_model = [s for s in report["stages"][1:] if s["kind"] != "export"][-1]
    assert sbs["stage"] == last_model["stage"] and sbs["rounds"] == 2
    assert sbs["decode_ratio"] == pytest.approx(sbs["final"]["decode_tok_s"] / sbs["source"]["decode_tok_s"])
    assert "Side by side" in (tmp_path / "run" / "report.md").read_text() and "Side by side" in html
    calibrated = [s for s in recipe.stages if s.kind in ("prune", "quantize", "lowrank")
                  and s.options.get("method") not in ("magnitude", "rtn", "svd")]
    # one calibration set per run, however many stages use it
    assert len(list((tmp_path / "run").glob("calibration-*.pt"))) == (1 if calibrated else 0)


def test_rerun_skips_unchanged_stages_and_redoes_changed_ones(tiny_dir, tmp_path):
    text = ("name: t\nstages:\n  - prune: {method: magnitude, sparsity: 0.5}\n"
            "  - quantize: {method: rtn, bits: 4, group_size: 32}\n  - eval: {}\n")
    recipe = fast(parse_recipe(text, "t.yaml"), tiny_dir("qwen2"))
    logs: list[str] = []
    first = run_recipe(recipe, tmp_path / "run", log=logs.append)
    assert sum("running" in m for m in logs) == 3
    logs.clear()
    again = run_recipe(recipe, tmp_path / "run", log=logs.append)
    assert sum("skipped" in m for m in logs) == 3 and again["stages"] == first["stages"]
    assert all(r["done"] for r in plan(recipe, tmp_path / "run"))
    changed = fast(parse_recipe(text.replace("bits: 4", "bits: 3"), "t.yaml"), tiny_dir("qwen2"))
    logs.clear()
    run_recipe(changed, tmp_path / "run", log=logs.append)
    assert [m.split("]")[0] for m in logs if "running" in m] == ["[02-quantize", "[03-eval"]
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "01-prune" / "model")
    assert pruned.num_parameters() > 0


def test_a_failing_stage_keeps_earlier_outputs_and_resumes(tiny_dir, tmp_path):
    broken = tmp_path / "broken_teacher"    # resolves (it has a config.json), fails when loaded
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    text = ("name: t\nstages:\n  - prune: {method: magnitude, sparsity: 0.5}\n"
            f"  - distill: {{teacher: {broken}, steps: 2, batch_size: 2, seq_len: 32, max_rows: 8}}\n")
    recipe = fast(parse_recipe(text, "t.yaml"), tiny_dir("llama"))
    with pytest.raises(SlmkitError, match=r"stage 2 \(distill, 02-distill\) failed"):
        run_recipe(recipe, tmp_path / "run", log=lambda m: None)
    assert (tmp_path / "run" / "01-prune" / "stage.json").exists()
    assert not (tmp_path / "run" / "02-distill" / "stage.json").exists()
    fixed = fast(parse_recipe(text.replace(str(broken), "source"), "t.yaml"), tiny_dir("llama"))
    logs: list[str] = []
    run_recipe(fixed, tmp_path / "run", log=logs.append)
    assert any("01-prune] unchanged" in m for m in logs) and any("02-distill] running" in m for m in logs)


def test_cli_dry_run_and_report_compare(tiny_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nevaluation: {ppl_tokens: 300, speed_prompt: 8, speed_new_tokens: 4, "
                      "speed_repeats: 1}\ncalibration: {spec: embedded, n: 4, length: 64}\n"
                      "stages:\n  - quantize: {method: rtn, bits: 4, group_size: 32}\n")
    assert main(["shrink", str(recipe), "--model", str(tiny_dir("llama")), "--out", str(tmp_path / "a"),
                 "--dry-run"]) == 0
    assert "01-quantize" in capsys.readouterr().out and not (tmp_path / "a" / "01-quantize").exists()
    for run in ("a", "b"):
        assert main(["shrink", str(recipe), "--model", str(tiny_dir("llama")), "--out", str(tmp_path / run)]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    # per run: its stage table and its where-it-loads table
    assert out.count("| 01-quantize |") == 4 and "| a/01-quantize |" in out and "## Pareto" in out
    assert (tmp_path / "cmp" / "compare.html").read_text().count("<table>") == 5  # 2 per run + Pareto
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["stages"][0]["stage"] == "00-source"


def _rep(name, stages):
    return {"recipe": name, "model": "m", "stages": [
        {"stage": st, "metrics": {"disk_mb": mb, "ppl": {"default": {"window": p1}, "x.txt": {"window": p2}},
                                  "speed": {"decode_tok_s": tps}}} for st, mb, p1, p2, tps in stages]}


def test_pareto_marks_dominated_points_only():
    from slmkit.recipes.report import pareto, pareto_markdown, table

    runs = {"chain": _rep("chain", [("00-source", 100, 10, 20, 10), ("03-quantize", 30, 11, 22, 16)]),
            "qonly": _rep("qonly", [("00-source", 100, 10, 20, 10), ("01-quantize", 35, 11.5, 21, 15)])}
    by = {f"{p['run']}/{p['stage']}": p["dominated_by"] for p in pareto(runs)}
    assert by["chain/03-quantize"] == []            # smallest, fastest
    assert by["qonly/01-quantize"] == []            # worse in-domain but better on x.txt: not dominated
    assert by["chain/00-source"] == [] and "qonly/00-source" not in by   # one source, listed once
    runs["qonly"]["stages"][1]["metrics"]["ppl"]["x.txt"]["window"] = 23   # now worse everywhere
    by = {f"{p['run']}/{p['stage']}": p["dominated_by"] for p in pareto(runs)}
    assert by["qonly/01-quantize"] == ["chain/03-quantize"]
    assert "| qonly/01-quantize | 35.0 | 11.500 | 23.000 | 15.0 | chain/03-quantize |" in pareto_markdown(runs)
    head, rows = table(runs["chain"])
    assert head[-2:] == ["size vs source", "decode vs source"] and rows[1][-2:] == ["0.30x", "1.60x"]


def test_if_present_data_is_used_where_it_exists_and_skipped_elsewhere(tiny_dir, tmp_path):
    here = tmp_path / "prose.txt"
    here.write_text("A short text that exists. " * 60)
    text = f"""name: r
evaluation: {{ppl_tokens: 300, speed_prompt: 8, speed_new_tokens: 4, speed_repeats: 1,
             texts: [default, "if-present:{here}", "if-present:/nonexistent/austen.txt"],
             mc: "if-present:/nonexistent/mc.jsonl"}}
stages:
  - quantize: {{method: rtn, bits: 4, group_size: 32}}
"""
    recipe = dataclasses.replace(parse_recipe(text, "r.yaml"), model=str(tiny_dir("llama")))
    logs: list[str] = []
    report = run_recipe(recipe, tmp_path / "run", log=logs.append)
    assert sorted(report["stages"][1]["metrics"]["ppl"]) == sorted(["default", str(here)])
    assert "mc" not in report["stages"][1]["metrics"]
    assert any("/nonexistent/austen.txt does not exist" in m for m in logs)
    assert any("/nonexistent/mc.jsonl does not exist" in m for m in logs)


def test_shrink_killed_mid_stage_resumes_and_the_final_model_generates(tiny_dir, tmp_path):
    """A real `slmkit shrink` process SIGKILLed during its distillation stage: the finished stage
    stays, the killed one left no stage record, and the same command then finishes the run; the
    final checkpoint loads with `slmkit.models.load` and generates text."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: killed\n"
        "calibration: {spec: embedded, n: 4, length: 64}\n"
        "evaluation: {texts: [default], ppl_tokens: 400, mc: null, speed_prompt: 8, "
        "speed_new_tokens: 4, speed_repeats: 1}\n"
        "stages:\n"
        "  - prune: {method: magnitude, sparsity: 0.5}\n"
        "  - distill: {teacher: source, steps: 400, batch_size: 2, seq_len: 32, max_rows: 16}\n"
        "  - quantize: {method: rtn, bits: 4, group_size: 32}\n")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "slmkit", "shrink", str(recipe), "--out", str(run),
           "--model", str(tiny_dir("llama"))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not (run / "02-distill").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)                                  # well inside the 400 training steps
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert (run / "01-prune" / "stage.json").exists()
    assert not (run / "02-distill" / "stage.json").exists() and not (run / "report.json").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[01-prune] unchanged" in done.stdout + done.stderr
    report = json.loads((run / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]][1:] == ["01-prune", "02-distill", "03-quantize"]

    from slmkit.models import load

    model, tok = load(run / "03-quantize" / "model")
    ids = tok("Hello", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5


def test_an_export_stage_writes_calibrated_gguf_grids_unchanged(tiny_dir, tmp_path):
    import importlib.util

    import gguf
    import numpy as np

    from slmkit.models import load

    recipe = quantize_then_export("{method: rtn, gguf_type: q5_0}", tiny_dir("llama"), llama_cpp_rounds=2)
    report = run_recipe(recipe, tmp_path / "run", log=lambda m: None)
    quantized, export = report["stages"][1], report["stages"][2]
    model, _ = load(quantized["output"], "float32")
    file = {t.name: t for t in gguf.GGUFReader(export["output"]).tensors}
    t = file["blk.0.ffn_up.weight"]
    assert t.tensor_type.name == "Q5_0"
    ours = model.model.layers[0].mlp.up_proj.dense_weight().numpy()
    theirs = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    assert np.array_equal(theirs.view(np.uint32), ours.astype(np.float32).view(np.uint32))
    # llama.cpp beside the report: its own quantizations of the source and the run's GGUF, all
    # measured by llama.cpp on the same windows; one line instead when the extra is missing
    section = report["llama_cpp"]
    md = (tmp_path / "run" / "report.md").read_text()
    if importlib.util.find_spec("llama_cpp") is None:
        assert section["skipped"] in md and "slmkit[llamacpp]" in section["skipped"]
        return
    rows = section["rows"]
    assert list(rows) == ["source (bf16)", "llama.cpp Q8_0", "llama.cpp Q4_K_M", "llama.cpp Q4_0",
                          "slmkit 02-export"]
    for row in rows.values():
        assert len(row["decode_runs"]) == 2 and row["decode_tok_s"] > 0
        assert row["ppl"]["default"]["window"] > 1
    assert rows["llama.cpp Q4_0"]["bytes"] < rows["llama.cpp Q8_0"]["bytes"] < rows["source (bf16)"]["bytes"]
    # the run's GGUF scores in llama.cpp as the quantized model does in PyTorch
    torch_ppl = quantized["metrics"]["ppl"]["default"]["window"]
    assert abs(rows["slmkit 02-export"]["ppl"]["default"]["window"] / torch_ppl - 1) < 0.01
    assert "llama.cpp side by side" in md and "vs Q4_K_M" in md
    assert "llama.cpp side by side" in (tmp_path / "run" / "report.html").read_text()
    again = run_recipe(recipe, tmp_path / "run", log=lambda m: None)    # nothing left to measure
    assert again["llama_cpp"]["rows"] == rows


def test_the_report_says_where_each_output_loads(tiny_dir, tmp_path):
    recipe = quantize_then_export("{method: rtn, bits: 4, group_size: 32, symmetric: false}", tiny_dir("llama"),
                                  llama_cpp_rounds=0)
    report = run_recipe(recipe, tmp_path / "run", log=lambda m: None)
    quantized, export = report["stages"][1]["loads"], report["stages"][2]["loads"]
    assert quantized["transformers"].startswith("no: asymmetric") and quantized["slmkit"] == "yes"
    assert export["llama.cpp"] == "yes"
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Where each output loads" in md and "llm-compressor#1618" in md
