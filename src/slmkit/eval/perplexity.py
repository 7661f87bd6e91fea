"""Perplexity in two documented protocols.

(i) `window` — token-level sliding window (GPTQ/Wanda papers, HF's perplexity guide). The whole
    text is one token stream (documents joined by a blank line). Windows of `window` tokens start
    every `stride` tokens (stride = window: non-overlapping, the default). Each window scores only
    the tokens no earlier window scored; a window's first token has no in-window context and is
    never scored. ppl = exp(total NLL / scored tokens). `drop_last` drops a final partial window
    (the papers' `numel // seqlen` rule). Reported as `token_perplexity`.

(ii) `rolling` — lm-evaluation-harness `loglikelihood_rolling` over whole documents. Each document
    is tokenised alone (no special tokens) and predicted in full: the first window is
    [prefix] + tokens (prefix = BOS, or EOS when there is none), later windows of `max_length`
    tokens each predict the next `max_length` tokens, conditioned on the tokens just before them.
    Reports word_perplexity = exp(-LL / words), byte_perplexity = exp(-LL / UTF-8 bytes),
    bits_per_byte = -LL / bytes / ln 2 (words = len(re.split(r"\\s+", doc)), as lm-eval counts).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from slmkit.data.chunk import encode_docs, token_stream
from slmkit.data.sources import TextData
from slmkit.errors import SlmkitError
from slmkit.eval.scoring import score_requests
from slmkit.models.introspect import check_length, context_length, pad_id, prefix_token
from slmkit.progress import progress_bar

PROTOCOLS = ("window", "rolling")
DEFAULT_LENGTH = 2048


@dataclass
class PerplexityConfig:
    """Which perplexity protocols run, and their window lengths, stride and batch size."""

    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS),
                                 metadata={"help": "which protocols to run: window, rolling"})
    window: int | None = field(default=None, metadata={
        "help": "protocol (i) window length in tokens (default: min(2048, model context))"})
    stride: int | None = field(default=None, metadata={
        "help": "protocol (i) stride; default = window (non-overlapping)"})
    drop_last: bool = field(default=False, metadata={
        "help": "protocol (i): drop a final partial window (the GPTQ/Wanda papers' rule)"})
    max_length: int | None = field(default=None, metadata={
        "help": "protocol (ii) rolling window length (default: min(2048, model context))"})
    batch_tokens: int = field(default=1024, metadata={
        "help": "tokens per forward batch (memory vs. speed)"})

    def __post_init__(self):
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise SlmkitError(f"perplexity protocols must be among {', '.join(PROTOCOLS)}; got {bad or 'none'}")
        for name in ("window", "stride", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise SlmkitError(f"perplexity {name} must be >= 2, not {value}")
        if self.batch_tokens < 1:
            raise SlmkitError(f"batch_tokens must be >= 1, not {self.batch_tokens}")


def default_window(model) -> int:
    """The window both protocols use when none is given: min(2048, the model's context)."""
    return min(DEFAULT_LENGTH, context_length(model) or DEFAULT_LENGTH)


def _default_length(model, value: int | None, what: str) -> int:
    if value is None:
        return default_window(model)
    check_length(model, value, what)
    return value


def window_requests(n_tokens: int, window: int, stride: int, drop_last: bool) -> list[tuple[int, int, int]]:
    """(begin, end, n_ctx) per window over a stream of `n_tokens` (see protocol (i))."""
    if stride > window:
        raise SlmkitError(f"stride ({stride}) must not exceed window ({window}); tokens would be skipped")
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        if drop_last and end - begin < window:
            break
        n_ctx = max(1, (end - begin) - (end - prev_end))
        if end - begin > n_ctx:
            out.append((begin, end, n_ctx))
        prev_end = end
        if end == n_tokens:
            break
    return out


def window_perplexity(model, tokenizer, data: TextData, cfg: PerplexityConfig) -> dict:
    """Protocol (i): token perplexity over windows of the joined token stream (see the module docstring)."""
    window = _default_length(model, cfg.window, "perplexity window")
    stride = cfg.stride or window
    ids = token_stream(tokenizer, data).tolist()
    spans = window_requests(len(ids), window, stride, cfg.drop_last)
    if not spans:
        raise SlmkitError(f"{data.name} has {len(ids)} tokens: too few for one window of {window}")
    requests = [(ids[b:e], n_ctx) for b, e, n_ctx in spans]
    with progress_bar("ppl (window)", sum(e - b - 1 for b, e, _ in spans)) as advance:
        scores = score_requests(model, requests, pad=pad_id(tokenizer),
                                batch_tokens=cfg.batch_tokens, progress=advance)
    nll = -sum(s.logprob for s in scores)
    n = sum(s.n_tokens for s in scores)
    return {"token_perplexity": math.exp(nll / n), "nll_per_token": nll / n, "tokens_scored": n,
            "window": window, "stride": stride, "windows": len(spans), "drop_last": cfg.drop_last}


def rolling_windows(tokens: list[int], prefix: int, max_length: int) -> list[tuple[list[int], int]]:
    """lm-eval's rolling windows (context_len=1) as scorer requests `(tokens, n_ctx)`."""
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    out = [([prefix] + tokens[:first], 1)]
    predicted = first
    while predicted < len(tokens):
        pred_len = min(len(tokens) - predicted, max_length)
        end = predicted + pred_len
        seq = tokens[end - max_length - 1: end]
        out.append((seq, len(seq) - pred_len))
        predicted = end
    return out


def count_words(doc: str) -> int:
    return len(re.split(r"\s+", doc))


def rolling_perplexity(model, tokenizer, data: TextData, cfg: PerplexityConfig) -> dict:
    """Protocol (ii): lm-eval's rolling log-likelihood of each document -> word and byte perplexity,
    bits per byte."""
    max_length = _default_length(model, cfg.max_length, "rolling max_length")
    prefix = prefix_token(tokenizer)
    requests, owner = [], []
    for d, toks in enumerate(encode_docs(tokenizer, data.docs)):
        wins = rolling_windows(toks, prefix, max_length)
        requests += wins
        owner += [d] * len(wins)
    if not requests:
        raise SlmkitError(f"{data.name} tokenises to no tokens")
    with progress_bar("ppl (rolling)", sum(len(t) - 1 for t, _ in requests)) as advance:
        scores = score_requests(model, requests, pad=pad_id(tokenizer),
                                batch_tokens=cfg.batch_tokens, progress=advance)
    doc_ll = [0.0] * len(data.docs)
    for d, s in zip(owner, scores):
        doc_ll[d] += s.logprob
    ll = sum(doc_ll)
    words = sum(count_words(doc) for doc in data.docs)
    n_bytes = sum(len(doc.encode("utf-8")) for doc in data.docs)
    n_tok = sum(s.n_tokens for s in scores)
    return {"word_perplexity": math.exp(-ll / words), "byte_perplexity": math.exp(-ll / n_bytes),
            "bits_per_byte": -ll / n_bytes / math.log(2), "token_perplexity": math.exp(-ll / n_tok),
            "loglikelihood": ll, "doc_loglikelihoods": doc_ll, "words": words, "bytes": n_bytes,
            "tokens_scored": n_tok, "max_length": max_length, "documents": len(data.docs)}


def perplexity(model, tokenizer, data: TextData, cfg: PerplexityConfig | None = None) -> dict:
    """Run the configured protocols -> {"window": {...}, "rolling": {...}, "data": {...}}."""
    cfg = cfg or PerplexityConfig()
    out: dict = {"data": data.describe()}
    if "window" in cfg.protocols:
        out["window"] = window_perplexity(model, tokenizer, data, cfg)
    if "rolling" in cfg.protocols:
        out["rolling"] = rolling_perplexity(model, tokenizer, data, cfg)
    return out
