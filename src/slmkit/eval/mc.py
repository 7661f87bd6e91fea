"""Zero-shot multiple choice by log-likelihood (lm-evaluation-harness conventions).

Each jsonl record is `{"question": str, "choices": [str, ...], "answer": int}`. The context is
`prompt.format(question=...)`, each continuation is `delimiter + choice`; the choice with the
highest summed log-likelihood is the prediction (`acc`), and with the highest log-likelihood per
UTF-8 byte of the choice text (`acc_norm`). Tokenisation follows lm-eval's `_encode_pair`: trailing
spaces of the context move to the continuation, the pair is encoded whole and split where the
context's own encoding ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.data.sources import read_jsonl
from slmkit.errors import SlmkitError
from slmkit.eval.scoring import score_requests
from slmkit.models.introspect import pad_id, prefix_token
from slmkit.progress import progress_bar


@dataclass
class MCConfig:
    """A multiple-choice task: its jsonl file, how many items, and how the context is written."""

    path: str | None = field(default=None, metadata={
        "help": "jsonl file of {question, choices, answer} records"})
    limit: int | None = field(default=None, metadata={"help": "score only the first N items"})
    prompt: str = field(default="Question: {question}\nAnswer:", metadata={
        "help": "context template; {question} is replaced"})
    delimiter: str = field(default=" ", metadata={"help": "text between context and choice"})
    batch_tokens: int = field(default=1024, metadata={"help": "tokens per forward batch"})


@dataclass(frozen=True)
class MCItem:
    question: str
    choices: list[str]
    answer: int


def load_items(path: str | Path, limit: int | None = None) -> list[MCItem]:
    """Read {question, choices, answer} records from a jsonl file (the first `limit`), checking each one."""
    items = []
    for i, rec in enumerate(read_jsonl(path), 1):
        missing = [k for k in ("question", "choices", "answer") if k not in rec]
        if missing:
            raise SlmkitError(f"{path}: record {i} lacks {', '.join(missing)}; each record needs "
                              "question, choices (a list) and answer (an index)")
        choices, answer = rec["choices"], rec["answer"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise SlmkitError(f"{path}: record {i}: choices must be a list of >= 2 strings")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise SlmkitError(f"{path}: record {i}: answer {answer!r} is not an index into its "
                              f"{len(choices)} choices")
        items.append(MCItem(str(rec["question"]), [str(c) for c in choices], answer))
        if limit is not None and len(items) >= limit:
            break
    return items


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair` for causal models."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    return ctx, whole[len(ctx):]


def multiple_choice(model, tokenizer, items: list[MCItem], cfg: MCConfig | None = None) -> dict:
    """Score every choice of every item by log-likelihood -> `acc` and `acc_norm` (per byte), as
    lm-eval does."""
    cfg = cfg or MCConfig()
    if not items:
        raise SlmkitError("no multiple-choice items to score")
    requests, owner = [], []
    for i, item in enumerate(items):
        context = cfg.prompt.format(question=item.question)
        for choice in item.choices:
            ctx, cont = encode_pair(tokenizer, context, cfg.delimiter + choice)
            if not cont:
                raise SlmkitError(f"item {i + 1}: choice {choice!r} tokenises to nothing")
            if not ctx:
                ctx = [prefix_token(tokenizer)]
            requests.append((ctx + cont, len(ctx)))
            owner.append(i)
    with progress_bar("multiple choice", sum(len(t) - 1 for t, _ in requests)) as advance:
        scores = score_requests(model, requests, pad=pad_id(tokenizer),
                                batch_tokens=cfg.batch_tokens, progress=advance)
    per_item, k = [], 0
    for item in items:
        lls = [s.logprob for s in scores[k: k + len(item.choices)]]
        k += len(item.choices)
        norm = [ll / max(1, len(c.encode("utf-8"))) for ll, c in zip(lls, item.choices)]
        per_item.append({"pred": max(range(len(lls)), key=lls.__getitem__),
                         "pred_norm": max(range(len(norm)), key=norm.__getitem__),
                         "answer": item.answer, "loglikelihoods": lls})
    n = len(items)
    acc = sum(r["pred"] == r["answer"] for r in per_item) / n
    acc_norm = sum(r["pred_norm"] == r["answer"] for r in per_item) / n
    return {"acc": acc, "acc_norm": acc_norm, "n": n,
            "acc_stderr": math.sqrt(acc * (1 - acc) / max(1, n - 1)), "items": per_item}
