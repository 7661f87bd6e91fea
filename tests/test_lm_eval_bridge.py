"""The lm-evaluation-harness bridge, on a local custom task (no network)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from slmkit.data import TextData, embedded_text  # noqa: E402
from slmkit.eval import MCConfig, PerplexityConfig, multiple_choice, rolling_perplexity  # noqa: E402
from slmkit.eval.lm_eval_bridge import register, run_lm_eval, wrap  # noqa: E402
from slmkit.eval.mc import load_items  # noqa: E402
from slmkit.models import load  # noqa: E402

MC_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "wordnet_mc_dev.jsonl"
TASK = "slmkit_test_mc"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A multiple-choice lm-eval task over 12 local items, prompt identical to slmkit's MC."""
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    if MC_FILE.is_file():
        lines = MC_FILE.read_text().splitlines()[:12]
    else:  # shared data missing: make items of the same shape
        lines = [json.dumps({"question": f"Which word is defined as: thing {i}?",
                             "choices": ["cat", "dog", "tree", "house"], "answer": i % 4}) for i in range(12)]
    (d / "items.jsonl").write_text("\n".join(lines) + "\n")
    (d / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    return d


def test_register_is_idempotent_and_visible_to_lm_eval():
    from lm_eval.api.registry import get_model

    cls = register()
    assert register() is cls
    assert get_model("slmkit") is cls
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own models still resolve


def test_rolling_loglikelihood_matches_ours(tiny_dir):
    from lm_eval.api.instance import Instance

    model, tok = load(tiny_dir("llama"), "float32")
    data = TextData("t", [d[:1500] for d in embedded_text("eval").docs[:3]])
    ours = rolling_perplexity(model, tok, data, PerplexityConfig(protocols=["rolling"], max_length=64))
    lm = wrap(model, tok, max_length=64, batch_size=1)
    theirs = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (d,), i)
                                       for i, d in enumerate(data.docs)], disable_tqdm=True)
    assert ours["doc_loglikelihoods"] == pytest.approx(theirs, rel=1e-4)


def test_custom_task_acc_matches_our_mc_scorer(tiny_dir, task_dir):
    model, tok = load(tiny_dir("qwen2"), "float32")
    results = run_lm_eval(model, tok, [TASK], include_path=str(task_dir))
    items = load_items(task_dir / "items.jsonl")
    ours = multiple_choice(model, tok, items, MCConfig())
    assert results[TASK]["acc,none"] == pytest.approx(ours["acc"])
    assert results[TASK]["acc_norm,none"] == pytest.approx(ours["acc_norm"])


def test_slmkit_eval_runs_lm_eval_tasks(tiny_dir, task_dir, tmp_path):
    from slmkit.cli.main import main

    rc = main(["eval", str(tiny_dir("llama")), "--tasks", "speed", "--speed-prompt-tokens", "8",
               "--speed-new-tokens", "3", "--speed-repeats", "1", "--speed-warmup", "0",
               "--lm-eval-tasks", TASK, "--lm-eval-include", str(task_dir), "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    (metrics,) = report["models"].values()
    assert 0.0 <= metrics["lm_eval"][TASK]["acc,none"] <= 1.0


def test_lm_eval_command_line_with_model_slmkit(tiny_dir, task_dir, tmp_path):
    """`slmkit lm-eval` takes lm-eval's own arguments, with `--model slmkit` available."""
    cmd = [sys.executable, "-m", "slmkit.cli.main", "lm-eval", "--model", "slmkit",
           "--model_args", f"path={tiny_dir('llama')},dtype=float32", "--tasks", TASK,
           "--include_path", str(task_dir), "--output_path", str(tmp_path / "out")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert TASK in out.stdout and "acc" in out.stdout
