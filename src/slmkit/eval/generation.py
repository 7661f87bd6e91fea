"""Generation tasks: greedy answers, answer extraction, exact match (e.g. GSM8K's `#### N`).

Each jsonl record has a prompt field and an answer field. Instruct models (a tokenizer with a chat
template) get the prompt as one user message through the template; base models get it raw. The
reference answer and the model's output both go through the extractor before comparing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slmkit.data.answers import EXTRACTORS
from slmkit.data.sources import read_jsonl
from slmkit.errors import SlmkitError
from slmkit.generate import Sampling, generate
from slmkit.generate.prompt import build_prompt
from slmkit.progress import progress_bar


@dataclass
class GenConfig:
    """A generation task: its jsonl file and fields, the answer extractor, and how prompts are written
    and decoded."""

    path: str | None = field(default=None, metadata={"help": "jsonl file of prompts and answers"})
    prompt_field: str = field(default="question", metadata={"help": "field holding the prompt"})
    answer_field: str = field(default="answer", metadata={"help": "field holding the answer"})
    extract: str = field(default="gsm8k", metadata={
        "help": "answer extractor: gsm8k (number after ####, else last number), exact"})
    limit: int | None = field(default=20, metadata={"help": "first N records (generation is slow)"})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens generated per prompt"})
    batch_size: int = field(default=4, metadata={"help": "prompts generated together"})
    chat: str = field(default="auto", metadata={
        "help": "use the chat template: auto (if the tokenizer has one), yes, no"})
    instruction: str = field(default="Solve the problem. End with '#### <number>'.\n\n",
                             metadata={"help": "text put before every prompt"})

    def __post_init__(self):
        if self.extract not in EXTRACTORS:
            raise SlmkitError(f"extract must be one of {', '.join(EXTRACTORS)}, not {self.extract!r}")
        if self.chat not in ("auto", "yes", "no"):
            raise SlmkitError(f"chat must be auto, yes or no, not {self.chat!r}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise SlmkitError("max_new_tokens and batch_size must be >= 1")


def load_records(path: str | Path, cfg: GenConfig) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from a jsonl file, the first `cfg.limit` of them."""
    out = []
    for i, rec in enumerate(read_jsonl(path), 1):
        for f in (cfg.prompt_field, cfg.answer_field):
            if f not in rec:
                raise SlmkitError(f"{path}: record {i} has no field {f!r} (it has: {', '.join(rec)})")
        out.append((str(rec[cfg.prompt_field]), str(rec[cfg.answer_field])))
        if cfg.limit is not None and len(out) >= cfg.limit:
            break
    return out


def generation(model, tokenizer, records: list[tuple[str, str]], cfg: GenConfig | None = None) -> dict:
    """Greedy answers to `records`, extracted and compared with the references -> `exact_match` and
    every item."""
    cfg = cfg or GenConfig()
    if not records:
        raise SlmkitError("no generation records to evaluate")
    extract = EXTRACTORS[cfg.extract]
    results = []
    with progress_bar("generation", len(records), unit="prompts") as advance:
        for i in range(0, len(records), cfg.batch_size):
            batch = records[i: i + cfg.batch_size]
            prompts = [build_prompt(tokenizer, cfg.instruction + q, cfg.chat) for q, _ in batch]
            done = generate(model, tokenizer, prompts, Sampling(max_new_tokens=cfg.max_new_tokens),
                            max_batch=cfg.batch_size)
            for (_, ref), out in zip(batch, (c.text for c in done)):
                pred, gold = extract(out), extract(ref)
                results.append({"pred": pred, "gold": gold, "correct": pred is not None and pred == gold,
                                "output": out})
            advance(len(batch))
    return {"exact_match": sum(r["correct"] for r in results) / len(results), "n": len(results),
            "items": results}
