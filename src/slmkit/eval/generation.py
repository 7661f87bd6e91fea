"""Generation tasks: greedy answers, answer extraction, exact match (e.g. GSM8K's `#### N`).

Each jsonl record has a prompt field and an answer field. Instruct models (a tokenizer with a chat
template) get the prompt as one user message through the template; base models get it raw. The
reference answer and the model's output both go through the extractor before comparing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.data.sources import read_jsonl
from slmkit.errors import SlmkitError
from slmkit.eval.scoring import pad_id
from slmkit.progress import progress_bar

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _norm_number(s: str) -> str:
    s = s.replace(",", "").rstrip(".")
    return s[:-2] if s.endswith(".0") else s


def extract_gsm8k(text: str) -> str | None:
    """The number after '####' if present, else the last number in the text."""
    if "####" in text:
        m = _NUMBER.search(text.split("####")[-1])
        if m:
            return _norm_number(m.group())
    found = _NUMBER.findall(text)
    return _norm_number(found[-1]) if found else None


def extract_exact(text: str) -> str | None:
    return text.strip() or None


EXTRACTORS = {"gsm8k": extract_gsm8k, "number": extract_gsm8k, "exact": extract_exact}


@dataclass
class GenConfig:
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
    out = []
    for i, rec in enumerate(read_jsonl(path), 1):
        for f in (cfg.prompt_field, cfg.answer_field):
            if f not in rec:
                raise SlmkitError(f"{path}: record {i} has no field {f!r} (it has: {', '.join(rec)})")
        out.append((str(rec[cfg.prompt_field]), str(rec[cfg.answer_field])))
        if cfg.limit is not None and len(out) >= cfg.limit:
            break
    return out


def build_prompt(tokenizer, text: str, chat: str) -> str:
    use_chat = chat == "yes" or (chat == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SlmkitError("chat=yes but the tokenizer has no chat template")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of a batch of prompts (left padding, KV cache)."""
    import torch

    pad = pad_id(tokenizer)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, e in enumerate(encoded):
        ids[r, width - len(e):] = torch.tensor(e)
        mask[r, width - len(e):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad)
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]


def generation(model, tokenizer, records: list[tuple[str, str]], cfg: GenConfig | None = None) -> dict:
    cfg = cfg or GenConfig()
    if not records:
        raise SlmkitError("no generation records to evaluate")
    extract = EXTRACTORS[cfg.extract]
    results = []
    with progress_bar("generation", len(records), unit="prompts") as advance:
        for i in range(0, len(records), cfg.batch_size):
            batch = records[i: i + cfg.batch_size]
            prompts = [build_prompt(tokenizer, cfg.instruction + q, cfg.chat) for q, _ in batch]
            for (_, ref), out in zip(batch, generate_greedy(model, tokenizer, prompts, cfg.max_new_tokens)):
                pred, gold = extract(out), extract(ref)
                results.append({"pred": pred, "gold": gold, "correct": pred is not None and pred == gold,
                                "output": out})
            advance(len(batch))
    return {"exact_match": sum(r["correct"] for r in results) / len(results), "n": len(results),
            "items": results}
