"""The one log-likelihood scorer every evaluator uses.

A request is `(tokens, n_ctx)`: the model reads `tokens[:-1]` and we sum the log-probabilities of
`tokens[n_ctx:]` (each predicted from everything before it). Requests are sorted by length and
batched by a token budget with right padding, so perplexity windows and multiple-choice items go
through the same code. Per position we compute `logit[target] - logsumexp(logits)` in float32,
which never materialises a full-vocabulary log-softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from slmkit.errors import SlmkitError

if TYPE_CHECKING:
    import torch

LOGITS_BUDGET = 1 << 28  # float32 logits elements held at once (1 GiB)


@dataclass(frozen=True)
class Score:
    logprob: float   # sum of log-probabilities of the scored tokens
    n_tokens: int    # how many tokens were scored
    greedy: bool | None  # every scored token was the argmax prediction (None: not computed)


def context_length(model) -> int | None:
    """The longest sequence the model's config says it handles (None when it says nothing)."""
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_length(model, length: int, what: str) -> None:
    limit = context_length(model)
    if limit is not None and length > limit:
        raise SlmkitError(f"{what} is {length} tokens but the model's context is {limit} tokens; "
                          f"use a value <= {limit}")


def rows_per_batch(model, seq_len: int, batch_tokens: int) -> int:
    vocab = model.config.get_text_config().vocab_size
    by_logits = max(1, LOGITS_BUDGET // max(1, seq_len * vocab))
    return max(1, min(batch_tokens // max(1, seq_len), by_logits))


def pad_id(tokenizer) -> int:
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return tid
    return 0


def score_requests(model, requests: Sequence[tuple[Sequence[int], int]], *, pad: int = 0,
                   batch_tokens: int = 4096, greedy: bool = False,
                   progress=None) -> list[Score]:
    """Score each `(tokens, n_ctx)` request; results are in request order.

    `progress` is an optional callable taking the number of tokens just processed."""
    import torch

    for tokens, n_ctx in requests:
        if not 1 <= n_ctx < len(tokens):
            raise ValueError(f"request needs 1 <= n_ctx < len(tokens), got {n_ctx}, {len(tokens)}")
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    results: list[Score | None] = [None] * len(requests)
    device = next(model.parameters()).device
    i = 0
    while i < len(order):
        longest = len(requests[order[i]][0]) - 1
        batch = order[i: i + rows_per_batch(model, longest, batch_tokens)]
        i += len(batch)
        inp = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for r, idx in enumerate(batch):
            toks = requests[idx][0]
            inp[r, : len(toks) - 1] = torch.as_tensor(toks[:-1])
            mask[r, : len(toks) - 1] = 1
        with torch.inference_mode():
            kwargs = {} if bool(mask.all()) else {"attention_mask": mask.to(device)}
            logits = model(input_ids=inp.to(device), use_cache=False, **kwargs).logits
            for r, idx in enumerate(batch):
                toks, n_ctx = requests[idx]
                rows = logits[r, n_ctx - 1: len(toks) - 1].float()          # [n_scored, vocab]
                target = torch.as_tensor(toks[n_ctx:], device=rows.device)  # [n_scored]
                picked = rows.gather(-1, target[:, None]).squeeze(-1)
                logprob = (picked - torch.logsumexp(rows, dim=-1)).sum().item()
                is_greedy = bool((rows.argmax(-1) == target).all()) if greedy else None
                results[idx] = Score(logprob, len(target), is_greedy)
        del logits
        if progress is not None:
            progress(sum(len(requests[idx][0]) - 1 for idx in batch))
    return results  # type: ignore[return-value]
