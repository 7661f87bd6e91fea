"""Proxy tuning (Liu et al., 2024): steer a large base model with the difference a fine-tune made
to a small one, at decoding time, without touching the large model's weights:

    logits_t = base_t + alpha * (expert_t - anti_expert_t)

(expert: the tuned small model; anti-expert: the same small model untuned). All three must share
one tokenizer. Each model keeps its own KV cache; one token per step is appended to all three.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slmkit.errors import SlmkitError
from slmkit.generate.lm import LocalLM, same_vocabulary

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch


@dataclass
class ProxyStats:
    new_tokens: int = 0
    mean_abs_shift: float = 0.0   # mean |alpha * (expert - anti)| at the chosen tokens


def check_same_vocab(*lms: LocalLM) -> None:
    bad = [lm.name for lm in lms[1:] if not same_vocabulary(lms[0], lm)]
    if bad:
        raise SlmkitError(f"proxy tuning needs one tokenizer for base, expert and anti-expert; "
                          f"{', '.join(bad)} differ from the base {lms[0].name}")


def proxy_generate(base: LocalLM, expert: LocalLM, anti_expert: LocalLM, prompt_ids: list[int],
                   max_new_tokens: int, *, alpha: float = 1.0, temperature: float = 0.0,
                   eos_token_id: int | None = None, generator=None) -> tuple[list[int], ProxyStats]:
    """Proxy-tuned continuation of one prompt -> (new token ids, stats)."""
    outs, stats = proxy_generate_batch(base, expert, anti_expert, [prompt_ids], max_new_tokens,
                                       alpha=alpha, temperature=temperature,
                                       eos_token_id=eos_token_id, generator=generator)
    return outs[0], stats


def proxy_generate_batch(base: LocalLM, expert: LocalLM, anti_expert: LocalLM,
                         prompts: list[list[int]], max_new_tokens: int, *, alpha: float = 1.0,
                         temperature: float = 0.0, eos_token_id: int | None = None,
                         generator=None) -> tuple[list[list[int]], ProxyStats]:
    """Proxy-tuned continuations of several prompts decoded together (each model runs one
    batched forward per step) -> (new token ids per prompt, stats over all of them). A row stops
    at `eos_token_id` (kept) or after `max_new_tokens`."""
    import torch

    check_same_vocab(base, expert, anti_expert)
    if not prompts or any(not p for p in prompts):
        raise SlmkitError("proxy tuning needs at least one prompt, and no empty prompt")
    logits, states = zip(*(lm.prefill(prompts) for lm in (base, expert, anti_expert)))
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    shift = 0.0
    for _ in range(max_new_tokens):
        v = min(x.shape[-1] for x in logits)  # padded embedding rows of one vocabulary
        delta = alpha * (logits[1][:, :v] - logits[2][:, :v])
        z = logits[0][:, :v] + delta
        if temperature == 0:
            nxt = z.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(z / temperature, -1), 1, generator=generator)[:, 0]
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                outs[i].append(t)
                shift += float(delta[i, t].abs())
                done[i] = eos_token_id is not None and t == eos_token_id
        if all(done):
            break
        logits = [s.decode(nxt.tolist()) for s in states]
    n = sum(len(o) for o in outs)
    return outs, ProxyStats(new_tokens=n, mean_abs_shift=shift / max(n, 1))


def proxy_logprobs(base: LocalLM, expert: LocalLM, anti_expert: LocalLM, ids: list[int], start: int,
                   *, alpha: "float | Sequence[float]" = 1.0) -> "torch.Tensor":
    """Teacher-forced log-probabilities of `ids[start:]` under the proxy-tuned distribution
    (one forward pass per model over the whole sequence) -> float32 [len(ids) - start]. With
    alpha=0 it is the base model's own; summed, it is the proxy-tuned log-likelihood.

    A sequence of alphas scores them all from the same three forward passes ->
    [len(alpha), len(ids) - start], one row per alpha (a sweep costs no extra model calls)."""
    import torch

    check_same_vocab(base, expert, anti_expert)
    if not 1 <= start < len(ids):
        raise SlmkitError(f"start must be in [1, {len(ids) - 1}] (a non-empty context and "
                          f"continuation), got {start} for {len(ids)} tokens")
    sweep = not isinstance(alpha, numbers.Real)  # numpy and Python scalars alike
    alphas = [float(a) for a in alpha] if sweep else [float(alpha)]
    if not alphas:
        raise SlmkitError("proxy_logprobs: the alpha sweep is empty; pass a float or a non-empty list")
    with torch.inference_mode():
        logits = [lm.session().extend(ids)[start - 1: -1].float() for lm in (base, expert, anti_expert)]
    v = min(x.shape[-1] for x in logits)
    delta = logits[1][:, :v] - logits[2][:, :v]
    target = torch.tensor(ids[start:])[:, None]
    rows = [torch.log_softmax(logits[0][:, :v] + a * delta, -1).gather(1, target)[:, 0] for a in alphas]
    return torch.stack(rows) if sweep else rows[0]
