"""Cascades: the small model answers first; a query goes on to the large model only when the
small model's confidence in its own answer is below a threshold.

Confidence scores (higher = surer), any LM of the protocol:
  logprob   mean log-probability per token of the small model's answer (its own loglikelihood)
  agreement fraction of `samples` sampled answers whose extracted final answer equals the greedy
            one's (self-consistency)
  choice    for multiple choice: the probability the small model gives its own pick when its
            choice log-likelihoods are normalised over the choices (`choice_confidence`)

`sweep` turns per-query records (small correct?, large correct?, confidence) into the
quality-cost curve of every threshold, to pick one or to plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from slmkit.errors import SlmkitError


def _token_count(lm, text: str) -> int:
    tok = getattr(lm, "tokenizer", None)
    return max(1, len(tok(text, add_special_tokens=False)["input_ids"]) if tok else len(text.split()))


def logprob_confidence(lm, prompt: str, answer: str) -> float:
    """Mean log-probability per token of `answer` after `prompt` under `lm` (-inf for an empty answer)."""
    if not answer:
        return float("-inf")
    return lm.loglikelihood(prompt, answer) / _token_count(lm, answer)


def agreement_confidence(lm, prompt: str, answer: str, extract: Callable[[str], str | None],
                         samples: int = 4, temperature: float = 0.7) -> float:
    """Fraction of `samples` sampled answers whose extracted final answer equals `answer`'s
    (self-consistency)."""
    target = extract(answer)
    drawn = lm.generate([prompt] * samples, temperature=temperature)
    return sum(extract(d) == target for d in drawn) / samples


def choice_confidence(loglikelihoods: list[float]) -> float:
    """Softmax over a multiple-choice item's choice log-likelihoods; the winner's probability."""
    if not loglikelihoods:
        raise SlmkitError("choice_confidence needs at least one log-likelihood")
    top = max(loglikelihoods)
    z = sum(math.exp(v - top) for v in loglikelihoods)
    return 1.0 / z


@dataclass
class CascadeResult:
    answers: list[str]
    escalated: list[bool]
    confidence: list[float]
    stats: dict = field(default_factory=dict)


def cascade(small, large, prompts: list[str], threshold: float, *, max_new_tokens: int = 128,
            confidence: Callable[[object, str, str], float] = logprob_confidence) -> CascadeResult:
    """Answer every prompt with `small`; re-ask `large` where confidence < threshold."""
    if not prompts:
        raise SlmkitError("cascade needs at least one prompt")
    first = small.generate(prompts, max_new_tokens)
    conf = [confidence(small, p, a) for p, a in zip(prompts, first)]
    up = [c < threshold for c in conf]
    redo = [p for p, u in zip(prompts, up) if u]
    second = iter(large.generate(redo, max_new_tokens) if redo else [])
    answers = [next(second) if u else a for a, u in zip(first, up)]
    return CascadeResult(answers, up, conf, {"queries": len(prompts), "to_large": sum(up),
                                             "fraction_to_large": sum(up) / len(prompts)})


def sweep(small_correct: list[bool], large_correct: list[bool], confidence: list[float],
          large_cost: float = 1.0, small_cost: float = 0.0) -> list[dict]:
    """For every distinct threshold: fraction sent to the large model, cascade accuracy, and cost
    per query (small always runs)."""
    n = len(confidence)
    if not n or not len(small_correct) == len(large_correct) == n:
        raise SlmkitError("sweep needs equally long, non-empty small/large/confidence lists")
    points = []
    for t in sorted(set(confidence)) + [float("inf")]:
        up = [c < t for c in confidence]
        acc = sum(lc if u else sc for sc, lc, u in zip(small_correct, large_correct, up)) / n
        frac = sum(up) / n
        points.append({"threshold": t, "fraction_to_large": frac, "accuracy": acc,
                       "cost": small_cost + frac * large_cost})
    return points


def best_threshold(points: list[dict], keep: float, large_accuracy: float) -> dict | None:
    """The cheapest point whose accuracy is >= keep x the large model's."""
    ok = [p for p in points if p["accuracy"] >= keep * large_accuracy]
    return min(ok, key=lambda p: p["cost"]) if ok else None
