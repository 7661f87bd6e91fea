"""The one log-likelihood scorer every evaluator uses.

A request is `(tokens, n_ctx)`: the model reads `tokens[:-1]` and we sum the log-probabilities of
`tokens[n_ctx:]` (each predicted from everything before it). Requests are sorted by length and
batched by a token budget with right padding, so perplexity windows and multiple-choice items go
through the same code. Log-probabilities come from a fused float32 cross-entropy over the scored
positions only; no full-vocabulary log-softmax is materialised and no KV cache is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from slmkit.models.introspect import accepts_logits_to_keep
from slmkit.runtime.llamacpp import LlamaCppModel

LOGITS_BUDGET = 1 << 28  # float32 logits elements held at once (1 GiB)


@dataclass(frozen=True)
class Score:
    logprob: float   # sum of log-probabilities of the scored tokens
    n_tokens: int    # how many tokens were scored
    greedy: bool | None  # every scored token was the argmax prediction (None: not computed)


def rows_per_batch(model, seq_len: int, batch_tokens: int) -> int:
    vocab = model.config.get_text_config().vocab_size
    by_logits = max(1, LOGITS_BUDGET // max(1, seq_len * vocab))
    return max(1, min(batch_tokens // max(1, seq_len), by_logits))


def _rows(requests: Sequence[tuple[Sequence[int], int]]) -> list[tuple[tuple[int, ...], list[int]]]:
    """Requests grouped by identical model input `tokens[:-1]` -> (input, request indices).

    Requests that differ only in their final target (e.g. multiple-choice answers that are one
    token each after a shared context) then share one forward pass, as lm-eval's logits cache does."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (tokens, _) in enumerate(requests):
        groups.setdefault(tuple(tokens[:-1]), []).append(i)
    return sorted(groups.items(), key=lambda kv: -len(kv[0]))


def score_requests(model, requests: Sequence[tuple[Sequence[int], int]], *, pad: int = 0,
                   batch_tokens: int = 1024, greedy: bool = False,
                   progress=None) -> list[Score]:
    """Score each `(tokens, n_ctx)` request; results are in request order.

    Rows (distinct inputs) are sorted longest first and batched up to `batch_tokens` tokens; on a
    CPU one long window per forward is fastest, short rows gain from batching. Only the position
    range some row scores goes through the lm_head (`logits_to_keep`, where the model takes it).
    `progress` is an optional callable taking the number of input tokens just processed."""
    import torch
    import torch.nn.functional as F

    for tokens, n_ctx in requests:
        if not 1 <= n_ctx < len(tokens):
            raise ValueError(f"request needs 1 <= n_ctx < len(tokens), got {n_ctx}, {len(tokens)}")
    if isinstance(model, LlamaCppModel):     # a GGUF file in llama.cpp: one request per call
        out = []
        for tokens, n_ctx in requests:
            logprob, n, is_greedy = model.score(list(tokens), n_ctx)
            out.append(Score(logprob, n, is_greedy if greedy else None))
            if progress is not None:
                progress(len(tokens) - 1)
        return out
    rows = _rows(requests)
    results: list[Score | None] = [None] * len(requests)
    device = next(model.parameters()).device
    slicing = accepts_logits_to_keep(model)
    i = 0
    while i < len(rows):
        width = len(rows[i][0])
        batch = rows[i: i + rows_per_batch(model, width, batch_tokens)]
        i += len(batch)
        inp = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (tokens, _) in enumerate(batch):
            inp[r, : len(tokens)] = torch.as_tensor(tokens)
            mask[r, : len(tokens)] = 1
        # logits rows [lo, hi) cover every scored position of this batch
        lo = min(requests[j][1] - 1 for _, members in batch for j in members) if slicing else 0
        hi = max(len(tokens) for tokens, _ in batch) if slicing else width
        kwargs = {} if bool(mask.all()) else {"attention_mask": mask.to(device)}
        if slicing and (lo, hi) != (0, width):
            kwargs["logits_to_keep"] = torch.arange(lo, hi, device=device)
        with torch.inference_mode():
            logits = model(input_ids=inp.to(device), use_cache=False, **kwargs).logits
            for r, (_, members) in enumerate(batch):
                for j in members:
                    full, n_ctx = requests[j]
                    rows_ = logits[r, n_ctx - 1 - lo: len(full) - 1 - lo].float()  # [n_scored, vocab]
                    target = torch.as_tensor(full[n_ctx:], device=rows_.device)   # [n_scored]
                    logprob = -F.cross_entropy(rows_, target, reduction="sum").item()
                    is_greedy = bool((rows_.argmax(-1) == target).all()) if greedy else None
                    results[j] = Score(logprob, len(target), is_greedy)
        del logits
        if progress is not None:
            progress(sum(len(tokens) for tokens, _ in batch))
    return results  # type: ignore[return-value]
