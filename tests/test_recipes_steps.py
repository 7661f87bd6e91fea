"""One path from a step's config to its output: the command and the recipe stage of the same step
write the same model; the registry's facts decide calibration; bad options fail in make_step."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from slmkit.cli.main import main
from slmkit.data import Calibration
from slmkit.errors import SlmkitError
from slmkit.recipes import parse_recipe, plan, run_recipe
from slmkit.recipes.schema import Evaluation
from slmkit.recipes.steps import make_step

FAST_EVAL = Evaluation(texts=["default"], ppl_tokens=200, rolling=False, mc=None,
                       speed_prompt=8, speed_new_tokens=2, speed_repeats=1)


def test_the_command_and_the_recipe_stage_write_the_same_model(tiny_dir, tmp_path, capsys):
    model = str(tiny_dir("llama"))
    cli_out = tmp_path / "cli"
    assert main(["quantize", model, str(cli_out), "--method", "gptq", "--bits", "4", "--group-size", "32",
                 "--calib", "embedded", "--calib-n", "4", "--calib-len", "64", "--save-dtype", "bfloat16"]) == 0
    recipe = parse_recipe("name: same\nstages:\n  - quantize: {method: gptq, bits: 4, group_size: 32}\n", "r")
    recipe.model, recipe.evaluation = model, FAST_EVAL
    recipe.calibration = Calibration(spec="embedded", n=4, length=64)
    report = run_recipe(recipe, tmp_path / "run", log=lambda m: None)
    a = load_file(cli_out / "model.safetensors")
    b = load_file(f"{report['stages'][1]['output']}/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind, method, options, calibrates", [
    ("quantize", "rtn", {}, False), ("quantize", "gptq", {}, True), ("quantize", "awq", {}, True),
    ("prune", "magnitude", {}, False), ("prune", "magnitude", {"owl": True}, True),
    ("prune", "wanda", {}, True), ("prune", "width", {"target_params": "100M"}, True),
    ("lowrank", "svd", {"merge": True}, False), ("lowrank", "asvd", {}, True),
])
def test_the_registry_says_which_steps_calibrate(kind, method, options, calibrates):
    step = make_step(kind, method, options)
    assert step.needs_calibration is calibrates
    if "target_params" in options:
        assert step.config.target == "100M"
    assert step.merge is bool(options.get("merge"))


@pytest.mark.parametrize("kind, method, options, match", [
    ("squash", "rtn", {}, "unknown step kind"),
    ("quantize", "fp4", {}, "unknown for quantize"),
    ("quantize", "rtn", {"damp": 0.1}, "'damp' is not an option of quantize method 'rtn'"),
    ("prune", "wanda", {"sparsity": 1.5}, "sparsity"),
    ("prune", "magnitude", {"target_params": "10M"}, "'target' is not an option"),
])
def test_bad_steps_are_refused_when_made(kind, method, options, match):
    with pytest.raises(SlmkitError, match=match):
        make_step(kind, method, options)


def test_every_distillation_objective_runs_from_a_recipe(tiny_dir, tmp_path):
    prompts = tmp_path / "q.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"What is {i}?"}) + "\n" for i in range(6)))
    short = "steps: 2, batch_size: 2, seq_len: 32, max_rows: 8"
    text = (f"name: kd\nstages:\n"
            f"  - distill: {{teacher: {tiny_dir('qwen2')}, objective: blackbox, prompts: {prompts}, "
            f"max_new_tokens: 6, {short}}}\n"
            f"  - distill: {{teacher: source, objective: cached, teacher_rows: 3, soft_topk: 4, {short}}}\n"
            f"  - distill: {{teacher: source, loss: rkl, {short}}}\n")
    recipe = parse_recipe(text, "kd.yaml")
    recipe.model, recipe.evaluation = str(tiny_dir("llama")), FAST_EVAL
    report = run_recipe(recipe, tmp_path / "run", log=lambda m: None)
    blackbox, cached, logits = report["stages"][1:]
    assert blackbox["info"]["answers"]["kept"] > 0
    assert len((tmp_path / "run" / "01-distill" / "teacher_answers.jsonl").read_text().splitlines()) == 6
    assert cached["info"]["teacher_rows"]["kind"] == "self-generated"
    assert logits["info"]["train"]["steps"] == 2


def test_a_black_box_stage_without_its_prompts_fails_when_the_recipe_is_read(tmp_path):
    with pytest.raises(SlmkitError, match="does not exist"):
        parse_recipe(f"name: x\nstages:\n  - distill: {{objective: blackbox, prompts: {tmp_path}/none.jsonl}}\n")
    with pytest.raises(SlmkitError, match="objective 'whitebox' unknown"):
        parse_recipe("name: x\nstages:\n  - distill: {objective: whitebox}\n")


@pytest.mark.parametrize("stages, evaluation, match", [
    ("  - distill: {teacher: /nowhere/teacher, steps: 1}\n", "", "/nowhere/teacher"),
    ("  - quantize: {method: gptq}\n", "", "nowhere.txt"),
    ("  - eval: {}\n", "evaluation: {texts: [default, /nowhere/prose.txt]}\n", "if-present"),
])
def test_a_dry_run_reports_what_the_run_would_miss(tiny_dir, tmp_path, stages, evaluation, match):
    """`plan` (slmkit shrink --dry-run) fails on a missing teacher, calibration source or
    evaluation file before any stage runs."""
    text = f"name: x\n{evaluation}calibration: {{spec: nowhere.txt}}\nstages:\n{stages}"
    recipe = parse_recipe(text, "x.yaml")
    recipe.model = str(tiny_dir("llama"))
    with pytest.raises(SlmkitError, match=match):
        plan(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_every_stage_kind_has_a_runner():
    from slmkit.recipes.runner import STAGE_RUNNERS
    from slmkit.recipes.schema import STAGE_KINDS

    assert set(STAGE_RUNNERS) == set(STAGE_KINDS)
