"""`slmkit finetune`, `slmkit distill` and `slmkit lowrank` end to end on tiny model folders."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmkit.cli.main import main
from slmkit.models import load, read_manifest

TRAIN = ["--seq-len", "32", "--max-rows", "16", "--steps", "3", "--batch-size", "4",
         "--save-dtype", "float32"]


def test_finetune_lm_writes_model_log_and_resumable_checkpoint(tiny_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    code = main(["finetune", str(tiny_dir("llama")), str(out), "--data", "default:calib",
                 "--eval-data", "default:eval", "--max-rows", "16", *TRAIN[:2], *TRAIN[4:]])
    assert code == 0, capsys.readouterr().err
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.num_parameters() > 0
    steps = read_manifest(out / "model")["steps"][-1]
    assert steps["finetune"] == "lm" and steps["summary"]["steps"] == 3
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3] and "eval_loss" in log[-1]
    assert (out / "checkpoint.pt").exists()
    # a second run with more steps resumes from the checkpoint instead of starting over
    code = main(["finetune", str(tiny_dir("llama")), str(out), "--data", "default:calib",
                 *TRAIN[:4], "--steps", "5", *TRAIN[6:]])
    assert code == 0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5]


def test_finetune_sft_with_lora(tiny_dir, tmp_path, capsys):
    pytest.importorskip("peft")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}.", "response": f"I say {i}."}) + "\n"
                            for i in range(16)))
    out = tmp_path / "lora"
    code = main(["finetune", str(tiny_dir("qwen2")), str(out), "--sft", str(data), "--lora",
                 "--lora-r", "4", *TRAIN])
    assert code == 0, capsys.readouterr().err
    model = AutoModelForCausalLM.from_pretrained(out / "model")   # merged: a plain checkpoint
    assert not any("lora" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("objective", ["kl", "jsd", "hidden"])
def test_distill_white_box(objective, tiny_dir, tmp_path, capsys):
    out = tmp_path / objective
    code = main(["distill", "--teacher", str(tiny_dir("llama")), "--student", str(tiny_dir("llama")),
                 "--objective", objective, str(out), "--data", "default:calib", *TRAIN])
    assert code == 0, capsys.readouterr().err
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    key = {"kl": "fkl", "hidden": "hidden"}.get(objective, objective)
    assert all(key in r for r in log if "loss" in r)


def test_distill_black_box_caches_teacher_answers(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "q.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"What is {i}?"}) + "\n" for i in range(8)))
    out = tmp_path / "bb"
    code = main(["distill", "--teacher", str(tiny_dir("qwen2")), "--student", str(tiny_dir("llama")),
                 "--objective", "blackbox", "--prompts", str(prompts), "--prompt-field", "question",
                 "--teacher-tokens", "6", str(out), *TRAIN[:2], "--steps", "2", "--batch-size", "4",
                 "--save-dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    answers = [json.loads(x) for x in (out / "teacher_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 8 and all(a["response"] is not None for a in answers)
    assert read_manifest(out / "model")["steps"][-1]["distill"] == "blackbox"


def test_distill_from_cached_teacher_distributions(tiny_dir, tmp_path, capsys, monkeypatch):
    """--objective cached: the teacher writes rows (kept in the self-generation cache with its top-k
    distributions), text rows are mixed in, the student trains on both with CE-cost steps."""
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cached"
    args = ["distill", "--teacher", str(tiny_dir("llama")), "--student", str(tiny_dir("llama")),
            "--objective", "cached", "--teacher-rows", "6", "--soft-topk", "8", str(out),
            "--data", "default:calib", *TRAIN]
    assert main(args) == 0, capsys.readouterr().err
    step = read_manifest(out / "model")["steps"][-1]
    assert step["distill"] == "cached" and step["soft_weight"] == 0.5
    assert step["teacher_rows"]["n"] == 6 and step["teacher_rows"]["teacher_topk"] == 8
    assert len(list((tmp_path / "cache" / "selfgen").glob("*.pt"))) == 1
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    code = main(["distill", "--teacher", str(tiny_dir("llama")), "--student", str(tiny_dir("llama")),
                 "--objective", "cached", "--teacher-rows", "0", str(tmp_path / "bad"), *TRAIN])
    assert code != 0 and "--teacher-rows" in capsys.readouterr().err
    # teacher rows alone, with held-out text for the eval loss (no --data needed)
    alone = tmp_path / "alone"
    assert main(["distill", "--teacher", str(tiny_dir("llama")), "--student", str(tiny_dir("llama")),
                 "--objective", "cached", "--teacher-rows", "6", "--soft-topk", "8", str(alone),
                 "--eval-data", "default:eval", *TRAIN]) == 0, capsys.readouterr().err
    log = [json.loads(x) for x in (alone / "train_log.jsonl").read_text().splitlines()]
    assert "eval_loss" in log[-1]


def test_distill_refuses_missing_data(tiny_dir, tmp_path, capsys):
    code = main(["distill", "--teacher", str(tiny_dir("llama")), "--student", str(tiny_dir("llama")),
                 str(tmp_path / "x"), *TRAIN])
    assert code == 1 and "--data" in capsys.readouterr().err


def test_lowrank_cli_saves_factors_that_slmkit_reloads(tiny_dir, tmp_path, capsys):
    out = tmp_path / "lr"
    code = main(["lowrank", str(tiny_dir("llama")), str(out), "--method", "asvd", "--keep", "0.5",
                 "--calib-n", "4", "--calib-len", "32", "--save-dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    model, _ = load(out, dtype="float32")
    report = read_manifest(out)["report"]["result"]
    assert model.num_parameters() == report["params_after"] < report["params_before"]
    merged = tmp_path / "merged"
    code = main(["lowrank", str(tiny_dir("llama")), str(merged), "--method", "svd", "--merge",
                 "--save-dtype", "float32"])
    assert code == 0
    plain = AutoModelForCausalLM.from_pretrained(merged)
    with torch.no_grad():
        assert torch.isfinite(plain(torch.tensor([[5, 6, 7]])).logits).all()


def test_lowrank_model_recovers_by_distillation_and_stays_factored(tiny_dir, tmp_path, capsys):
    from slmkit.data import embedded_text
    from slmkit.data.chunk import chunk, token_stream
    from slmkit.runtime.lowrank import LowRankLinear

    dense = tiny_dir("llama")
    factored = tmp_path / "lr"
    assert main(["lowrank", str(dense), str(factored), "--method", "svd", "--keep", "0.3",
                 "--save-dtype", "float32"]) == 0, capsys.readouterr().err
    out = tmp_path / "recovered"
    code = main(["distill", "--teacher", str(dense), "--student", str(factored), "--objective", "kl",
                 str(out), "--data", "default:calib", "--seq-len", "32", "--max-rows", "32",
                 "--steps", "80", "--batch-size", "8", "--lr", "3e-3", "--save-dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    teacher, tok = load(dense, dtype="float32")
    before, _ = load(factored, dtype="float32")
    after, _ = load(out / "model", dtype="float32")
    assert after.num_parameters() == before.num_parameters() < teacher.num_parameters()
    assert any(isinstance(m, LowRankLinear) for m in after.modules())     # still factored on disk
    ids = chunk(token_stream(tok, embedded_text("eval")), 32)[:8]          # held-out text

    def kl_to_teacher(model):
        with torch.no_grad():
            t = torch.log_softmax(teacher(ids).logits, -1)
            s = torch.log_softmax(model(ids).logits, -1)
        return float((t.exp() * (t - s)).sum(-1).mean())

    k_before, k_after = kl_to_teacher(before), kl_to_teacher(after)
    assert k_after < 0.8 * k_before, (k_before, k_after)
