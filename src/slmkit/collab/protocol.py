"""The minimal interface every collaborator speaks, and its local implementation.

    LM.generate(prompts, max_new_tokens, temperature)  -> texts
    LM.loglikelihood(context, continuation)           -> sum of token log-probs
    LM.tokenizer_fingerprint()                         -> same value <=> same token ids

Token-level collaboration (speculative decoding, proxy tuning) also needs a KV-cached session
over token ids, which `LocalLM.session()` gives:

    s = lm.session(); logits = s.extend([ids...])   # [n, vocab] float32, one row per new token
    s.crop(n)                                        # forget everything after the first n tokens

and several sequences decode together through `LocalLM.batch_session()`:

    b = lm.batch_session(); logits = b.start([[ids...], ...])   # [rows, vocab], next token each
    logits = b.step([t0, t1, ...])                               # one new token per row
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Protocol

from slmkit.errors import SlmkitError
from slmkit.generate.greedy import generate_greedy
from slmkit.models.introspect import accepts_logits_to_keep, pad_id
from slmkit.models.kvcache import cache_kwargs, output_cache
from slmkit.models.narrow import narrow_linears

if TYPE_CHECKING:
    import torch


class LM(Protocol):
    name: str

    def generate(self, prompts: list[str], max_new_tokens: int = 128,
                 temperature: float = 0.0) -> list[str]: ...

    def loglikelihood(self, context: str, continuation: str) -> float: ...

    def tokenizer_fingerprint(self) -> str: ...


def fingerprint(tokenizer) -> str:
    """A hash of the token -> id map (two tokenizers agree on ids iff their hashes agree)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def same_vocabulary(a, b) -> bool:
    """Whether two LMs give tokens the same ids: every token string both know has one id, and
    the rest are a handful of added tokens (tokenizer classes add e.g. <|endoftext|> on load).
    LMs without a local tokenizer compare by fingerprint. A LocalLM remembers its answers (a
    150k-token comparison takes ~0.3 s, once per generate call otherwise)."""
    memo = getattr(a, "_vocab_checks", None)
    if memo is not None and b in memo:
        return memo[b]
    ta, tb = getattr(a, "tokenizer", None), getattr(b, "tokenizer", None)
    if ta is None or tb is None:
        same = a.tokenizer_fingerprint() == b.tokenizer_fingerprint()
    else:
        va, vb = ta.get_vocab(), tb.get_vocab()
        shared = va.keys() & vb.keys()
        same = all(va[k] == vb[k] for k in shared) and \
            len(va.keys() ^ vb.keys()) <= max(16, len(shared) // 1000)
    if memo is not None:
        memo[b] = same
    return same


def _narrow(model, on: bool):
    import contextlib

    return narrow_linears(model) if on else contextlib.nullcontext()


class Session:
    """A KV-cached pass over one token sequence of a local model."""

    def __init__(self, model, narrow: bool = True):
        from transformers import DynamicCache

        self.model, self.narrow = model, narrow
        self.cache = DynamicCache(config=model.config)
        self.length = 0
        self._keeps = accepts_logits_to_keep(model)

    def extend(self, ids: list[int], keep: int | None = None) -> "torch.Tensor":
        """Feed `ids` after what is cached -> logits [len(ids), vocab] (float32), or only the
        last `keep` rows (the output head then runs on those alone: a prompt's logits are most
        of a prefill's head cost, 150k x 1.5k weights per token for Qwen2.5-1.5B)."""
        import torch

        if not ids:
            raise SlmkitError("extend() needs at least one token")
        extra = {"logits_to_keep": keep} if keep and self._keeps else {}
        with torch.inference_mode(), _narrow(self.model, self.narrow):
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True, **cache_kwargs(self.model, self.cache),
                             **extra)
        self.cache = output_cache(out)
        self.length += len(ids)
        logits = out.logits[0]
        return (logits[-keep:] if keep else logits).float()

    def crop(self, length: int) -> None:
        """Keep only the first `length` cached tokens (rollback of rejected drafts)."""
        if length < self.length:
            self.cache.crop(length - self.length)  # transformers 5.2x: minus the number of tokens to drop
            self.length = length


class BatchSession:
    """KV-cached decoding of several token sequences at once. Prompts are left-padded to one
    length; the attention mask hides the padding and every row gets its own position ids, so each
    row computes what it would alone (up to float rounding of the padded matmuls)."""

    def __init__(self, model, pad_token_id: int = 0, narrow: bool = True):
        self.model, self.pad, self.narrow = model, pad_token_id, narrow
        self.cache = self.mask = self.positions = None
        self._extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}

    def start(self, prompts: list[list[int]]) -> "torch.Tensor":
        """Feed the prompts -> next-token logits [len(prompts), vocab] (float32)."""
        import torch
        from transformers import DynamicCache

        if not prompts or any(not p for p in prompts):
            raise SlmkitError("a batch needs at least one prompt, and no prompt may be empty")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        self.mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            self.mask[i, width - len(p):] = 1
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=self.model.config)
        return self._forward(ids, positions)

    def step(self, tokens: list[int]) -> "torch.Tensor":
        """Append one token to every row -> the next logits [rows, vocab] (float32)."""
        import torch

        if self.cache is None:
            raise SlmkitError("call start(prompts) before step()")
        self.mask = torch.cat([self.mask, torch.ones(len(tokens), 1, dtype=torch.long)], 1)
        return self._forward(torch.tensor(tokens)[:, None], self.positions[:, None] + 1)

    def _forward(self, ids, positions) -> "torch.Tensor":
        import torch

        with torch.inference_mode(), _narrow(self.model, self.narrow):
            out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                             use_cache=True, **cache_kwargs(self.model, self.cache), **self._extra)
        self.cache, self.positions = output_cache(out), positions[:, -1]
        return out.logits[:, -1].float()


class LocalLM:
    """A Hugging Face causal LM and its tokenizer behind the LM protocol.

    `narrow=True` (the default) runs few-token forwards (speculative verification, small-batch
    decode steps) through slmkit.models.narrow: slmkit's native kernel for float32 and bf16
    weights, else torch.mm(weight, x^T) for float32 (a 5-token Qwen2.5-1.5B step: 1.6 instead
    of 2.9 one-token steps); it changes which kernel rounds, not what is computed."""

    def __init__(self, model, tokenizer, name: str | None = None, narrow: bool = True):
        import weakref

        self.model, self.tokenizer, self.narrow = model.eval(), tokenizer, narrow
        self._vocab_checks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__

    def session(self) -> Session:
        return Session(self.model, self.narrow)

    def batch_session(self) -> BatchSession:
        return BatchSession(self.model, pad_id(self.tokenizer), self.narrow)

    def tokenizer_fingerprint(self) -> str:
        return fingerprint(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0) -> list[str]:
        if temperature != 0.0:
            return [self._sample(p, max_new_tokens, temperature) for p in prompts]
        return generate_greedy(self.model, self.tokenizer, prompts, max_new_tokens)

    def _sample(self, prompt: str, max_new_tokens: int, temperature: float) -> str:
        import torch

        s, ids, out = self.session(), self.encode(prompt), []
        logits = s.extend(ids)[-1]
        eos = self.tokenizer.eos_token_id
        for _ in range(max_new_tokens):
            t = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1))
            if t == eos:
                break
            out.append(t)
            logits = s.extend([t])[-1]
        return self.tokenizer.decode(out, skip_special_tokens=True)

    def loglikelihood(self, context: str, continuation: str) -> float:
        import torch

        ctx, cont = self.encode(context), self.encode(continuation)
        if not ctx or not cont:
            raise SlmkitError("loglikelihood needs a context and a continuation that are not empty "
                              "after tokenisation")
        logits = self.session().extend(ctx + cont)
        logp = torch.log_softmax(logits[len(ctx) - 1: -1], -1)   # the positions predicting `cont`
        return float(logp.gather(1, torch.tensor(cont)[:, None]).sum())
