"""Weak-to-strong generalisation (Burns et al., 2023): fine-tune a strong student on a weak
teacher's answers and measure how much of the gap between the weak teacher and the strong
ceiling (the student trained on true labels) it recovers:

    PGR = (weak-to-strong - weak) / (strong ceiling - weak)

`weak_labels` asks the weak model (any LM of the protocol) and returns SFT records; train the
student on them with `slmkit.train` (`sft_batches` + `CausalLM`) exactly as on true labels.
"""

from __future__ import annotations

from slmkit.errors import SlmkitError


def weak_labels(weak, prompts: list[str], max_new_tokens: int = 128) -> list[dict]:
    """[{prompt, response}] with the weak model's answers as the responses."""
    answers = weak.generate(prompts, max_new_tokens)
    return [{"prompt": p, "response": a} for p, a in zip(prompts, answers)]


def performance_gap_recovered(weak: float, weak_to_strong: float, ceiling: float) -> float:
    """PGR from three scores of the same metric (higher = better)."""
    if ceiling == weak:
        raise SlmkitError(f"the strong ceiling ({ceiling}) equals the weak score: PGR is undefined; "
                          "pick a task where the strong model is clearly better")
    return (weak_to_strong - weak) / (ceiling - weak)
