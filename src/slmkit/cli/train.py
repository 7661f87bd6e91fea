"""`slmkit finetune MODEL OUT` and `slmkit distill --teacher T --student S OUT`: the one training
loop from the command line.

Data (both): `--data default:calib|FILE|hf:NAME` (plain text, cut into `--seq-len` blocks, every token
scored) or `--sft FILE.jsonl` (prompt/response records through the chat template, only the
response scored). `--eval-data` is held-out text for the periodic eval loss.

distill objectives: kl (forward KL), rkl, jsd, skl (skew KL) on the logits; hidden adds a
hidden-state term (MSE, evenly mapped layers, a learned projection when widths differ) to forward
KL; blackbox: the teacher answers the `--prompts` jsonl (cached next to OUT, resumable), answers
are filtered and the student is fine-tuned on them (any two tokenizers); cached: the teacher
writes `--teacher-rows` rows itself and keeps its top-`--soft-topk` next-token distributions as
it writes them, then the student trains on (1 - w) onehot + w x those distributions
(`--soft-weight`) at the cost of plain cross-entropy, no teacher forward per step; `--data` rows,
if given, are mixed in with cross-entropy only (one tokenizer).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from slmkit.cli.args import add_config_args, config_from_args
from slmkit.data.sources import load_text
from slmkit.distill.objectives import Distill, DistillConfig
from slmkit.distill.teacher_data import BlackboxConfig, CachedConfig, blackbox_data, cached_data
from slmkit.errors import SlmkitError
from slmkit.models import load, save
from slmkit.models.dtype import resolve_dtype
from slmkit.train import CausalLM, TrainConfig, train
from slmkit.train.lora import LoRAConfig, add_lora, merge_lora
from slmkit.train.sft import lm_batches, training_batches

OBJECTIVES = ("kl", "rkl", "jsd", "skl", "hidden", "blackbox", "cached")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder (model, train_log.jsonl, loss.png, checkpoint.pt)")
    p.add_argument("--data", default=None, help="text to train on: default:calib (the embedded "
                   "training half), a file or folder, a .jsonl (field text), hf:NAME")
    p.add_argument("--sft", default=None, help="jsonl of {prompt, response} records (SFT)")
    p.add_argument("--prompt-field", default="prompt", help="SFT prompt field (default prompt)")
    p.add_argument("--response-field", default="response", help="SFT response field")
    p.add_argument("--eval-data", default=None, help="held-out text for the eval loss, e.g. default:eval")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per training row (default 512)")
    p.add_argument("--max-rows", type=int, default=None, help="use at most this many rows")
    p.add_argument("--dtype", default="float32", help="dtype of the trained weights (default float32)")
    p.add_argument("--save-dtype", default="bfloat16", help="dtype on disk (default bfloat16)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft), merged at the end")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--no-resume", action="store_true", help="ignore OUT/checkpoint.pt and start over")
    add_config_args(p, TrainConfig, "train", "training options", prefixed_flags=False, skip={"betas"})


def add_parser(sub, argv=()):
    ft = sub.add_parser("finetune", help="fine-tune a model (LM or SFT, optionally LoRA)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ft.add_argument("model", help="hub id, model folder, .gguf file, or 'default'")
    _common(ft)
    ds = sub.add_parser("distill", help="distill a teacher into a student (white- or black-box)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ds.add_argument("--teacher", required=True, help="teacher model")
    ds.add_argument("--student", required=True, help="student model")
    ds.add_argument("--objective", default="kl", choices=OBJECTIVES, help="(default kl)")
    ds.add_argument("--prompts", default=None, help="blackbox: jsonl of prompts for the teacher")
    ds.add_argument("--teacher-tokens", type=int, default=256, help="blackbox: tokens per answer")
    ds.add_argument("--check", default=None, help="blackbox: keep answers whose final answer "
                    "matches the record's (gsm8k, exact)")
    ds.add_argument("--teacher-rows", type=int, default=128, help="cached: rows of --seq-len tokens "
                    "the teacher writes (sampled as self-generated calibration text; cached)")
    ds.add_argument("--soft-topk", type=int, default=64, help="cached: teacher tokens kept per position")
    ds.add_argument("--soft-weight", type=float, default=0.5,
                    help="cached: weight of the teacher's distribution in the target (default 0.5)")
    _common(ds)
    add_config_args(ds, DistillConfig, "kd", "distillation options", prefixed_flags=False,
                    skip={"loss", "layer_map", "hidden_weight"})
    return ft


def _batches(ns, tok):
    data = training_batches(tok, data=ns.data, sft=ns.sft, seq_len=ns.seq_len, max_rows=ns.max_rows,
                            prompt_key=ns.prompt_field, response_key=ns.response_field)
    return data, _held(ns, tok)


def _held(ns, tok):
    """The `--eval-data` rows, or None."""
    return lm_batches(tok, load_text(ns.eval_data), ns.seq_len) if ns.eval_data else None


def _fit_and_save(ns, model, tok, objective, data, held, report: dict) -> None:
    import torch

    cfg = config_from_args(ns, TrainConfig, "train")
    save_dtype = resolve_dtype(ns.save_dtype)
    target = model
    if ns.lora:
        target = add_lora(model, LoRAConfig(r=ns.lora_r))
    summary = train(target, objective, data, cfg, ns.out, eval_data=held, resume=not ns.no_resume)
    if ns.lora:
        model = merge_lora(target)
    model._slmkit_steps = [*getattr(model, "_slmkit_steps", []),
                           {**report, "config": vars(cfg), "summary": summary}]
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 writes the model
    model.to(save_dtype)
    with torch.no_grad():
        out = save(model, tok, f"{ns.out}/model", overwrite=True)
    print(f"{summary['steps']} steps, {summary['tokens']:,} tokens, {summary['tok_s']:,.0f} tok/s, "
          f"final loss {summary['final_loss']:.4f}" +
          (f", eval loss {summary['eval_loss']:.4f}" if "eval_loss" in summary else ""))
    print(f"wrote {out}")


def run(ns) -> int:
    if ns.command == "finetune":
        model, tok = load(ns.model, ns.dtype)
        data, held = _batches(ns, tok)
        _fit_and_save(ns, model, tok, CausalLM(), data, held,
                      {"finetune": "sft" if ns.sft else "lm", "data": ns.sft or ns.data})
        return 0
    return _distill(ns)


def _distill(ns) -> int:
    student, s_tok = load(ns.student, ns.dtype)
    teacher, t_tok = load(ns.teacher, ns.dtype)
    if ns.objective == "blackbox":
        return _blackbox(ns, student, s_tok, teacher, t_tok)
    if ns.objective == "cached":
        return _cached(ns, student, s_tok, teacher, t_tok)
    loss = {"kl": "fkl", "hidden": "fkl"}.get(ns.objective, ns.objective)
    kd = config_from_args(ns, DistillConfig, "kd", loss=loss,
                          hidden_weight=1.0 if ns.objective == "hidden" else 0.0)
    objective = Distill(teacher, kd, student, student_tokenizer=s_tok, teacher_tokenizer=t_tok)
    data, held = _batches(ns, s_tok)
    _fit_and_save(ns, student, s_tok, objective, data, held,
                  {"distill": ns.objective, "teacher": ns.teacher, "kd": vars(kd)})
    return 0


def _blackbox(ns, student, s_tok, teacher, t_tok) -> int:
    if not ns.prompts:
        raise SlmkitError("--objective blackbox needs --prompts FILE.jsonl (the teacher answers them)")
    cfg = BlackboxConfig(max_new_tokens=ns.teacher_tokens, prompt_field=ns.prompt_field,
                         prompts=ns.prompts, check=ns.check)
    data, counts = blackbox_data(teacher, t_tok, s_tok, cfg, ns.seq_len,
                                 Path(ns.out) / "teacher_answers.jsonl", ns.teacher)
    print(f"teacher answers: {counts}")
    _fit_and_save(ns, student, s_tok, CausalLM(), data, None,
                  {"distill": "blackbox", "teacher": ns.teacher, "answers": counts})
    return 0


def _cached(ns, student, s_tok, teacher, t_tok) -> int:
    """Distillation from the teacher's cached top-k distributions over rows it wrote itself."""
    if ns.sft:
        raise SlmkitError("--objective cached trains on rows the teacher writes; --sft does not apply "
                          "(use --objective blackbox for prompt/response data)")
    if ns.teacher_rows < 1:
        raise SlmkitError(f"--teacher-rows must be >= 1, not {ns.teacher_rows}")
    cfg = CachedConfig(ns.teacher_rows, ns.soft_topk, ns.soft_weight)
    text = _batches(ns, s_tok)[0] if ns.data else None
    data, gen = cached_data(teacher, t_tok, s_tok, cfg, ns.seq_len, text)
    del teacher
    _fit_and_save(ns, student, s_tok, CausalLM(soft_weight=cfg.soft_weight), data, _held(ns, s_tok),
                  {"distill": "cached", "teacher": ns.teacher, "soft_weight": cfg.soft_weight,
                   "teacher_rows": gen, "data": ns.data})
    return 0
