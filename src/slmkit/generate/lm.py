"""The minimal interface every collaborator speaks, and its local implementation.

    LM.generate(prompts, max_new_tokens, temperature)  -> texts
    LM.loglikelihood(context, continuation)           -> sum of token log-probs
    LM.tokenizer_fingerprint()                         -> same value <=> same token ids

`LocalLM.generate` runs on the one decode loop (`slmkit.generate.engine`). Token-level
collaboration (speculative decoding, proxy tuning) also needs the model's decoding state over
token ids: one sequence with rollback, from `LocalLM.session()`,

    s = lm.session(); logits = s.extend([ids...])   # [n, vocab] float32, one row per new token
    s.crop(n)                                        # forget everything after the first n tokens

or a batch of sequences, from `LocalLM.prefill()` (`slmkit.generate.kv.KVBatch`):

    logits, state = lm.prefill([[ids...], ...])     # [rows, vocab], next token each
    logits = state.decode([t0, t1, ...])             # one new token per row
"""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Protocol

import torch

from slmkit.errors import SlmkitError
from slmkit.generate.engine import generate as run_engine
from slmkit.generate.kv import KVBatch, Session
from slmkit.generate.prompt import build_prompt
from slmkit.generate.sampling import Sampling
from slmkit.models.introspect import pad_id


class LM(Protocol):
    """The protocol every collaborator speaks: generate text, score a continuation, and say which token
    ids it uses."""

    name: str

    def generate(self, prompts: list[str], max_new_tokens: int = 128,
                 temperature: float = 0.0) -> list[str]:
        """One continuation per prompt (greedy at temperature 0)."""

    def loglikelihood(self, context: str, continuation: str) -> float:
        """The sum of the log-probabilities of `continuation`'s tokens after `context`."""

    def tokenizer_fingerprint(self) -> str:
        """Equal for two models exactly when their tokenizers give the same token ids."""


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


class LocalLM:
    """A Hugging Face causal LM and its tokenizer behind the LM protocol.

    `narrow=True` (the default) runs few-token forwards (speculative verification, small-batch
    decode steps) through slmkit.models.narrow: slmkit's native kernel for float32 and bf16
    weights, else torch.mm(weight, x^T) for float32 (a 5-token Qwen2.5-1.5B step: 1.6 instead
    of 2.9 one-token steps); it changes which kernel rounds, not what is computed. `chat`: put
    prompts given to `generate` through the tokenizer's chat template: "auto" (when it has one),
    "yes" or "no" (raw text, the default)."""

    def __init__(self, model, tokenizer, name: str | None = None, narrow: bool = True, chat: str = "no"):
        self.model, self.tokenizer, self.narrow, self.chat = model.eval(), tokenizer, narrow, chat
        self._vocab_checks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__

    def session(self) -> Session:
        return Session(self.model, self.narrow)

    def prefill(self, prompts: list[list[int]]) -> tuple["torch.Tensor", KVBatch]:
        """Run token-id prompts together -> (next-token logits [rows, vocab] float32, their state)."""
        return KVBatch.prefill(self.model, prompts, pad_id(self.tokenizer), self.narrow)

    def tokenizer_fingerprint(self) -> str:
        return fingerprint(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0) -> list[str]:
        """Continuations of `prompts` (through the chat template when `chat` says so), greedy at
        temperature 0, else sampled from softmax(logits / temperature)."""
        texts = [build_prompt(self.tokenizer, p, self.chat) for p in prompts]
        done = run_engine(self.model, self.tokenizer, texts,
                          Sampling(max_new_tokens=max_new_tokens, temperature=temperature), narrow=self.narrow)
        return [c.text for c in done]

    def loglikelihood(self, context: str, continuation: str) -> float:
        ctx, cont = self.encode(context), self.encode(continuation)
        if not ctx or not cont:
            raise SlmkitError("loglikelihood needs a context and a continuation that are not empty "
                              "after tokenisation")
        logits = self.session().extend(ctx + cont)
        logp = torch.log_softmax(logits[len(ctx) - 1: -1], -1)   # the positions predicting `cont`
        return float(logp.gather(1, torch.tensor(cont)[:, None]).sum())
