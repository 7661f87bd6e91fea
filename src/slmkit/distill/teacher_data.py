"""Training data a teacher writes, for the two distillation objectives that need no teacher during
training; `slmkit distill` and recipe `distill` stages both build theirs here.

- black-box: the teacher answers prompts (`slmkit.distill.blackbox`); the student is fine-tuned on
  the answers that pass the filters (length; the right final answer with `check`).
- cached: the teacher writes rows itself (as self-generated calibration text) and its top-k
  next-token distribution at every position is kept; the student learns both the tokens and the
  distributions (`CausalLM(soft_weight=...)`). Needs one tokenizer for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from slmkit.data.sources import read_jsonl
from slmkit.distill.blackbox import TeacherConfig, filter_answers, teacher_answers
from slmkit.distill.objectives import check_same_tokenizer
from slmkit.errors import SlmkitError
from slmkit.generate.lm import LocalLM
from slmkit.generate.selfgen import generate_with_teacher_targets
from slmkit.train import Batches
from slmkit.train.sft import sft_batches

KINDS = ("logits", "blackbox", "cached")   # logits: the white-box objectives of `Distill`


@dataclass
class BlackboxConfig(TeacherConfig):
    """Black-box distillation: where the prompts are, how the teacher answers, which answers stay."""

    prompts: str | None = field(default=None, metadata={"help": "jsonl of prompts the teacher answers"})
    check: str | None = field(default=None, metadata={
        "help": "keep answers whose final answer matches the record's (gsm8k, exact)"})

    def check_inputs(self) -> None:
        if not self.prompts:
            raise SlmkitError("black-box distillation needs prompts: a jsonl of records the teacher answers")
        if not Path(self.prompts).expanduser().is_file():
            raise SlmkitError(f"prompts file {self.prompts} does not exist")


@dataclass
class CachedConfig:
    """Distillation from the teacher's cached top-k distributions over rows it wrote itself."""

    teacher_rows: int = field(default=128, metadata={
        "help": "rows of seq_len tokens the teacher writes (sampled as self-generated calibration "
                "text; cached)"})
    soft_topk: int = field(default=64, metadata={"help": "teacher tokens kept per position"})
    soft_weight: float = field(default=0.5, metadata={
        "help": "weight of the teacher's distribution in the target (the rest: the written token)"})

    def __post_init__(self) -> None:
        if not isinstance(self.teacher_rows, int) or self.teacher_rows < 1:
            raise SlmkitError(f"teacher_rows must be an integer >= 1, not {self.teacher_rows!r}")
        if not isinstance(self.soft_topk, int) or self.soft_topk < 1:
            raise SlmkitError(f"soft_topk must be an integer >= 1, not {self.soft_topk!r}")
        if not 0 <= self.soft_weight <= 1:
            raise SlmkitError(f"soft_weight must be in [0, 1], not {self.soft_weight!r}")


def blackbox_data(teacher, t_tok, s_tok, cfg: BlackboxConfig, seq_len: int, cache: str | Path,
                  teacher_name: str = "teacher") -> tuple[Batches, dict]:
    """The student's SFT rows from the teacher's answers (cached in `cache`, resumable) ->
    (batches, counts of the answers kept and dropped)."""
    cfg.check_inputs()
    lm = LocalLM(teacher, t_tok, name=teacher_name, chat=cfg.chat)
    answers = teacher_answers(lm, read_jsonl(cfg.prompts), cache, cfg)
    kept, counts = filter_answers(answers, s_tok, max_tokens=seq_len, check=cfg.check)
    if not kept:
        raise SlmkitError(f"no teacher answer survived the filters ({counts}); relax the answer "
                          "check or let the teacher write more tokens")
    return sft_batches(s_tok, kept, seq_len), counts


def cached_data(teacher, t_tok, s_tok, cfg: CachedConfig, seq_len: int,
                text: Batches | None = None) -> tuple[Batches, dict]:
    """Rows the teacher writes with its top-k distributions, plus `text` rows (no soft targets) ->
    (batches, the generation record)."""
    check_same_tokenizer(s_tok, t_tok)
    ids, soft_ids, soft_probs, gen = generate_with_teacher_targets(teacher, t_tok, cfg.teacher_rows,
                                                                   seq_len, cfg.soft_topk)
    if text is not None:
        k = soft_ids.shape[-1]
        ids = torch.cat([ids, text.ids])
        soft_ids = torch.cat([soft_ids, torch.zeros(*text.ids.shape, k, dtype=soft_ids.dtype)])
        soft_probs = torch.cat([soft_probs, torch.zeros(*text.ids.shape, k, dtype=soft_probs.dtype)])
    record = {k: v for k, v in gen.items() if k != "cache_path"}
    return Batches(ids, soft_ids=soft_ids, soft_probs=soft_probs), record
