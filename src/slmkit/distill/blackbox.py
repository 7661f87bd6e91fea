"""Black-box distillation: the teacher only writes text. It answers prompts (greedy), the answers
are cached line by line in a JSONL file (a killed run resumes at the first missing prompt),
filtered (length; the right final answer where the record carries one), and the student is then
fine-tuned on them (`slmkit.train.sft.sft_batches` + `CausalLM`). Works across tokenizers.

Teacher: anything that speaks the LM protocol (`slmkit.generate.lm.LM`): a local model
(`LocalLM(model, tokenizer, chat=...)`) or a remote OpenAI-compatible server
(`slmkit.collab.remote.RemoteLM`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.data.answers import EXTRACTORS
from slmkit.errors import SlmkitError
from slmkit.files import write_text_atomic
from slmkit.generate.lm import LM
from slmkit.progress import progress_bar


@dataclass
class TeacherConfig:
    max_new_tokens: int = field(default=256, metadata={"help": "tokens the teacher writes per prompt"})
    batch_size: int = field(default=4, metadata={"help": "prompts generated together"})
    chat: str = field(default="auto", metadata={"help": "a local teacher's chat template: auto, yes, no"})
    prompt_field: str = field(default="question", metadata={"help": "jsonl field of the prompt"})
    answer_field: str | None = field(default="answer", metadata={
        "help": "jsonl field with the reference answer (kept for the answer check), or None"})


def _read_cache(path: Path) -> list[dict]:
    if not path.exists():
        return []
    done = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.append(json.loads(line))
        except json.JSONDecodeError:
            # a line cut by a kill is the last one: drop it and regenerate that prompt
            if i == len(path.read_text(encoding="utf-8").splitlines()):
                break
            raise SlmkitError(f"{path}: line {i} is not JSON; delete the file to start over") from None
    return done


def teacher_answers(teacher: LM, records: list[dict], cache: str | Path,
                    cfg: TeacherConfig | None = None) -> list[dict]:
    """Every record's prompt answered by `teacher` (greedy, `cfg.max_new_tokens`) ->
    [{prompt, response, reference?, teacher}], in record order. Answers already in `cache` are
    reused, new ones appended as they come."""
    cfg = cfg or TeacherConfig()
    path = Path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = []
    for i, r in enumerate(records):
        if cfg.prompt_field not in r:
            raise SlmkitError(f"record {i} has no prompt field {cfg.prompt_field!r} (keys: {sorted(r)})")
        prompts.append(str(r[cfg.prompt_field]))
    done = _read_cache(path)
    if [d["prompt"] for d in done] != prompts[: len(done)]:
        raise SlmkitError(f"{path} holds answers to other prompts; use a new cache file or delete it")
    # rewrite what survived (drops a torn last line), then append
    write_text_atomic(path, "".join(json.dumps(d) + "\n" for d in done))
    with open(path, "a", encoding="utf-8") as f, \
            progress_bar("teacher answers", len(prompts), unit="prompts") as advance:
        advance(len(done))
        for start in range(len(done), len(prompts), cfg.batch_size):
            batch = list(range(start, min(start + cfg.batch_size, len(prompts))))
            outs = teacher.generate([prompts[i] for i in batch], cfg.max_new_tokens)
            for i, text in zip(batch, outs):
                rec = {"prompt": prompts[i], "response": text, "teacher": teacher.name}
                if cfg.answer_field and cfg.answer_field in records[i]:
                    rec["reference"] = str(records[i][cfg.answer_field])
                f.write(json.dumps(rec) + "\n")
                f.flush()
                done.append(rec)
            advance(len(batch))
    return done


def filter_answers(answers: list[dict], tokenizer=None, *, min_tokens: int = 1,
                   max_tokens: int | None = None, check: str | None = None) -> tuple[list[dict], dict]:
    """Keep answers with [min_tokens, max_tokens] tokens (counted with `tokenizer`, else words)
    and, with `check` (an extractor name, e.g. 'gsm8k'), whose final answer matches the record's
    reference. Returns (kept, counts of what was dropped and why)."""
    if check is not None and check not in EXTRACTORS:
        raise SlmkitError(f"check must be one of {', '.join(EXTRACTORS)}, not {check!r}")
    kept, dropped = [], {"too_short": 0, "too_long": 0, "wrong_answer": 0}
    for a in answers:
        text = a["response"]
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer else len(text.split())
        if n < min_tokens:
            dropped["too_short"] += 1
        elif max_tokens is not None and n > max_tokens:
            dropped["too_long"] += 1
        elif check and "reference" in a and EXTRACTORS[check](text) != EXTRACTORS[check](a["reference"]):
            dropped["wrong_answer"] += 1
        else:
            kept.append(a)
    return kept, {"kept": len(kept), **dropped}
