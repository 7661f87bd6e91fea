"""How one sequence picks its next token, and when it stops.

`Sampling` holds the per-request settings (those of OpenAI's completions API that decoding itself
needs); `next_token` turns one row of logits into a token and its log-probability. Greedy decoding
is temperature 0. Log-probabilities are those of the model's own distribution (the raw logits'
log-softmax), not of the distribution after temperature, top-k or top-p, as OpenAI and vLLM report
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from slmkit.errors import SlmkitError


@dataclass
class Sampling:
    """Decoding settings of one sequence."""

    max_new_tokens: int = field(default=128, metadata={"help": "tokens generated at most"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; else softmax(logits / T)"})
    top_p: float = field(default=1.0, metadata={"help": "keep the smallest set of tokens whose "
                                                        "probability reaches top_p (1 = all)"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens (0 = all)"})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "divide positive (multiply negative) logits of tokens already in the sequence (1 = off)"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "stop once the text contains one of these"})
    stop_token_ids: tuple[int, ...] = field(default=(), metadata={"help": "extra token ids that end the sequence"})
    ignore_eos: bool = field(default=False, metadata={"help": "keep going after end-of-sequence tokens"})
    logprobs: int | None = field(default=None, metadata={
        "help": "return each chosen token's log-probability and the top-n alternatives (0 = chosen only)"})
    seed: int | None = field(default=None, metadata={"help": "seed of this sequence's own random stream"})

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SlmkitError(f"max_new_tokens must be an integer >= 1, not {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise SlmkitError(f"temperature must be >= 0, not {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise SlmkitError(f"top_p must be in (0, 1], not {self.top_p!r}")
        if self.top_k < 0:
            raise SlmkitError(f"top_k must be >= 0, not {self.top_k!r}")
        if self.repetition_penalty <= 0:
            raise SlmkitError(f"repetition_penalty must be > 0, not {self.repetition_penalty!r}")
        if self.logprobs is not None and self.logprobs < 0:
            raise SlmkitError(f"logprobs must be >= 0 or None, not {self.logprobs!r}")
        self.stop = tuple([self.stop] if isinstance(self.stop, str) else self.stop)
        self.stop_token_ids = tuple(self.stop_token_ids)

    @classmethod
    def for_model(cls, model, **given) -> "Sampling":
        """Settings for `model`: those `given` (None = not given), else the model's
        `generation_config` (temperature, top_p, top_k, repetition_penalty where it sets them),
        else OpenAI's defaults (temperature 1, top_p 1)."""
        defaults = model_defaults(model)
        return cls(**{**defaults, **{k: v for k, v in given.items() if v is not None}})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def model_defaults(model) -> dict:
    """The sampling settings a model's `generation_config` sets (temperature, top_p, top_k,
    repetition_penalty), over OpenAI's defaults: temperature 1, top_p 1, no top-k, no penalty."""
    out = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    config = getattr(model, "generation_config", None)
    for key in out:
        value = getattr(config, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = type(out[key])(value)
    return out


def shape_logits(logits: torch.Tensor, s: Sampling, seen: torch.Tensor | None) -> torch.Tensor:
    """One row of float32 logits [vocab] after repetition penalty, temperature, top-k and top-p
    (removed tokens at -inf)."""
    if s.repetition_penalty != 1.0 and seen is not None and seen.numel():
        picked = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(picked > 0, picked / s.repetition_penalty, picked * s.repetition_penalty)
    if s.greedy:
        return logits
    logits = logits / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        logits = _nucleus(logits, s.top_p)
    return logits


def _nucleus(logits: torch.Tensor, top_p: float, bins: int = 2048) -> torch.Tensor:
    """Keep the most likely tokens until their mass reaches `top_p` (the top token always), the
    others at -inf. Without a full sort (~3 ms per row of a 50k vocabulary): tokens are binned
    by log-probability (0.01 nats per bin below the top), the bins' masses accumulated, and only
    the bin where the mass crosses `top_p` is sorted. Every token in a bin above it is kept,
    every token below dropped, exactly as a full sort would."""
    logp = torch.log_softmax(logits, -1)
    probs = logp.exp()
    which = ((logp.max() - logp) * 100).clamp(max=bins - 1).long()
    mass = torch.bincount(which, weights=probs.double(), minlength=bins)
    total = mass.cumsum(0)
    cut = int(torch.searchsorted(total, torch.tensor([top_p], dtype=total.dtype)).clamp(max=bins - 1))
    above = float(total[cut - 1]) if cut else 0.0
    inside = (which == cut).nonzero().squeeze(1)
    ranked, order = torch.sort(probs[inside], descending=True)
    before = above + ranked.double().cumsum(-1) - ranked.double()
    keep = torch.cat([(which < cut).nonzero().squeeze(1), inside[order[before < top_p]]])
    out = torch.full_like(logits, float("-inf"))
    out[keep] = logits[keep]
    return out


def next_token(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None,
               seen: torch.Tensor | None = None) -> tuple[int, float | None, list[tuple[int, float]] | None]:
    """(token, its log-probability or None, the top-n alternatives or None) from one row of
    logits [vocab]."""
    logits = logits.float()
    shaped = shape_logits(logits, s, seen)
    if s.greedy:
        token = int(shaped.argmax())
    else:   # inverse CDF: one uniform draw (torch.multinomial takes ~1 ms on a 50k vocabulary)
        cdf = torch.softmax(shaped, -1).cumsum(-1)
        u = torch.rand(1, generator=generator) * cdf[-1]
        token = int(torch.searchsorted(cdf, u, right=True).clamp(max=cdf.numel() - 1))
    return (token, *token_logprobs(logits, token, s.logprobs))


def token_logprobs(logits: torch.Tensor, token: int,
                   n: int | None) -> tuple[float | None, list[tuple[int, float]] | None]:
    """(log-probability of `token`, the top-`n` alternatives) under one row of logits [vocab]:
    (None, None) when `n` is None, no alternatives when it is 0."""
    if n is None:
        return None, None
    logp = torch.log_softmax(logits.float(), -1)
    top = None
    if n:
        values, ids = torch.topk(logp, min(n, logp.shape[-1]))
        top = list(zip(ids.tolist(), values.tolist()))
    return float(logp[token]), top
