"""Speculative decoding: a cheap drafter proposes k tokens, the target checks them all in one
forward pass, and keeps the longest acceptable prefix plus one token of its own.

- Greedy (temperature 0): a draft token is kept iff it is the target's argmax there, so the output
  is exactly the target's greedy output (up to the target's own numerics: verifying k + 1 tokens
  in one forward can round differently from one token at a time in low precision).
- Sampling (temperature > 0): Leviathan et al.'s rejection rule. Draft token d with draft
  probability q(d) is kept with probability min(1, p(d) / q(d)); at the first rejection the
  token is drawn from norm(max(0, p - q)); if all k are kept one more is drawn from p. The output
  is distributed exactly as the target's samples. A deterministic drafter (prompt lookup) has a
  one-hot q.
- Rollback: both models' KV caches are cropped to the accepted prefix.
- Adaptive k: +1 after a fully accepted round, -1 after a round rejected at its first token.

Drafters: `ModelDrafter` (any local model with the same tokenizer, e.g. a smaller sibling, or a
copy of the target that slmkit quantized or depth-pruned) and `PromptLookupDrafter` (no model:
copies the tokens that followed the longest recent n-gram match in the context).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from slmkit.errors import SlmkitError
from slmkit.generate.lm import LocalLM, Session, same_vocabulary

if TYPE_CHECKING:
    import torch


class Drafter(Protocol):
    def propose(self, seq: list[int], k: int, temperature: float,
                generator: "torch.Generator | None") -> tuple[list[int], "torch.Tensor | None"]:
        """Up to k tokens after `seq`, and their draft distributions [n, vocab] (None: one-hot)."""

    def accepted(self, length: int) -> None:
        """The sequence now agrees with the drafter's proposal on its first `length` tokens."""


def _probs(logits: "torch.Tensor", temperature: float) -> "torch.Tensor":
    import torch

    return torch.softmax(logits / temperature, dim=-1)


class ModelDrafter:
    """Drafts with a local model, and can end a proposal before k tokens:

    - `min_confidence` > 0: after a token where the draft's top probability falls below it
      (transformers' assisted generation does the same, starting at 0.4);
    - `min_joint_confidence` > 0: after the token where the product of the draft's top
      probabilities over the proposal so far falls below it. That product estimates the chance
      that the target accepts the whole proposal (SpecDec++, Huang et al. 2024, stops where the
      predicted chance of a rejection passes a threshold): a long run of confident tokens keeps
      going and a single doubtful one ends it.

    The doubtful token itself is still proposed: its draft step is already paid and verifying one
    more token costs the target almost nothing; the step after it, which the target would likely
    throw away, is what is saved. Whether and where a proposal stops depends only on the draft
    model, so greedy output and the sampled distribution stay exact."""

    def __init__(self, lm: LocalLM, min_confidence: float = 0.0, min_joint_confidence: float = 0.0):
        for name, v in (("min_confidence", min_confidence), ("min_joint_confidence", min_joint_confidence)):
            if not 0 <= v <= 1:
                raise SlmkitError(f"{name} is a probability in [0, 1], not {v!r}")
        self.lm = lm
        self.min_confidence, self.min_joint_confidence = min_confidence, min_joint_confidence
        self.session: Session | None = None

    def propose(self, seq, k, temperature, generator):
        import torch

        if self.session is None:
            self.session = self.lm.session()
        s = self.session
        logits = s.extend(seq[s.length:], keep=1)[-1]
        out, dists, joint = [], [], 1.0
        stops = self.min_confidence > 0 or self.min_joint_confidence > 0
        for i in range(k):
            if temperature == 0:
                t = int(logits.argmax())
            else:
                p = _probs(logits, temperature)
                t = int(torch.multinomial(p, 1, generator=generator))
                dists.append(p)
            out.append(t)
            if i == k - 1:
                break
            if stops:   # the doubtful token is proposed (verifying it is nearly free); the step after it is not paid
                top = float(torch.softmax(logits.float(), -1).max())
                joint *= top
                if top < self.min_confidence or joint < self.min_joint_confidence:
                    break
            logits = s.extend([t])[-1]
        return out, (torch.stack(dists) if dists else None)

    def accepted(self, length: int) -> None:
        if self.session is not None:
            self.session.crop(min(self.session.length, length))


class PromptLookupDrafter:
    """Find the last occurrence of the sequence's final n-gram (n = max_ngram .. 1) earlier in the
    sequence and propose the tokens that followed it (Saxena, "prompt lookup decoding")."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise SlmkitError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, seq, k, temperature, generator):
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(seq) <= n:
                continue
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start: start + n] == tail:
                    follow = seq[start + n: start + n + k]
                    if follow:
                        return follow, None
        return [], None

    def accepted(self, length: int) -> None:
        pass


class NoDrafter:
    """Proposes nothing: plain one-token-at-a-time decoding through the same code path (the
    target-only baseline)."""

    def propose(self, seq, k, temperature, generator):
        return [], None

    def accepted(self, length: int) -> None:
        pass


@dataclass
class SpecStats:
    """Counts from one `speculative_generate` call: rounds, drafted and accepted tokens, target
    forwards, k per round."""

    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    new_tokens: int = 0
    target_forwards: int = 0
    k_history: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    def as_dict(self) -> dict:
        return {"rounds": self.rounds, "proposed": self.proposed, "accepted": self.accepted,
                "new_tokens": self.new_tokens, "target_forwards": self.target_forwards,
                "acceptance_rate": self.acceptance_rate,
                "tokens_per_target_forward": self.tokens_per_target_forward}


def _verify(p_logits: "torch.Tensor", drafts: list[int], q: "torch.Tensor | None", temperature: float,
            generator) -> tuple[int, int]:
    """(number of drafts accepted, the target's own next token). p_logits [len(drafts) + 1, vocab]."""
    import torch

    if temperature == 0:
        for i, d in enumerate(drafts):
            best = int(p_logits[i].argmax())
            if best != d:
                return i, best
        return len(drafts), int(p_logits[len(drafts)].argmax())
    p = _probs(p_logits, temperature)
    for i, d in enumerate(drafts):
        qi = q[i] if q is not None else torch.nn.functional.one_hot(torch.tensor(d), p.shape[-1]).float()
        ratio = p[i, d] / qi[d].clamp(min=1e-20)
        if torch.rand((), generator=generator) < ratio:
            continue
        residual = (p[i] - qi).clamp(min=0)
        if residual.sum() <= 0:          # p == q here: any draw from p is exact
            residual = p[i]
        return i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))


class Speculator:
    """Speculative rounds inside slmkit's engine (`slmkit.generate.Engine(speculator=...)`): while
    one sequence runs alone, each step drafts up to k tokens and checks them in one forward of the
    target over the sequence's own state (`KVBatch.verify`, then `crop` to what was kept).
    Adaptive k as in `speculative_generate`; `stats` counts every round."""

    def __init__(self, drafter: Drafter, k: int = 4, max_k: int = 12):
        if k < 1 or max_k < k:
            raise SlmkitError(f"need 1 <= k <= max_k, got {k}, {max_k}")
        self.drafter, self.k, self.max_k = drafter, k, max_k
        self.stats = SpecStats()
        self._sequence = None

    def advance(self, sequence, seq: list[int], state, temperature: float, budget: int,
                generator: "torch.Generator | None" = None) -> list[int]:
        """One round for `sequence` (any id; a new one restarts the drafter), whose tokens are
        `seq` and whose `state` caches all of them but the last -> the new tokens (1 to k + 1, at
        most `budget`); `state` then caches all but the last new one."""
        if sequence != self._sequence:
            if isinstance(self.drafter, ModelDrafter):
                self.drafter.session = None
            self._sequence = sequence
        drafts, q = self.drafter.propose(seq, min(self.k, budget - 1), temperature, generator) \
            if budget > 1 else ([], None)
        logits = state.verify([seq[-1]] + drafts)
        n_ok, token = _verify(logits, drafts, q, temperature, generator)
        state.crop(len(seq) + n_ok)
        self.drafter.accepted(len(seq) + n_ok)
        st = self.stats
        st.rounds += 1
        st.target_forwards += 1
        st.proposed += len(drafts)
        st.accepted += n_ok
        st.new_tokens += n_ok + 1
        if drafts and n_ok == len(drafts):
            self.k = min(self.max_k, self.k + 1)
        elif drafts and n_ok == 0:
            self.k = max(1, self.k - 1)
        return drafts[:n_ok] + [token]


def speculative_generate(target: LocalLM, drafter: Drafter, prompt_ids: list[int], max_new_tokens: int,
                         *, k: int = 4, temperature: float = 0.0, adaptive: bool = True,
                         max_k: int = 12, eos_token_id: int | None = None,
                         generator: "torch.Generator | None" = None) -> tuple[list[int], SpecStats]:
    """New token ids after `prompt_ids` (at most max_new_tokens; stops after eos) and statistics."""
    if not prompt_ids:
        raise SlmkitError("speculative decoding needs a non-empty prompt")
    if k < 1 or max_new_tokens < 1:
        raise SlmkitError("k and max_new_tokens must be >= 1")
    if temperature < 0:
        raise SlmkitError(f"temperature must be >= 0, not {temperature}")
    if isinstance(drafter, ModelDrafter) and not same_vocabulary(drafter.lm, target):
        raise SlmkitError(f"draft {drafter.lm.name!r} and target {target.name!r} use different "
                          "tokenizers; speculative decoding needs one vocabulary (use prompt lookup)")
    stats = SpecStats()
    ts = target.session()
    seq = list(prompt_ids)
    # the target caches everything but the last token, which is fed with the drafts
    if len(seq) > 1:
        ts.extend(seq[:-1], keep=1)     # the prompt's logits are not needed: only its cache
        stats.target_forwards += 1
    n0 = len(seq)
    while len(seq) - n0 < max_new_tokens:
        budget = max_new_tokens - (len(seq) - n0)   # the target adds one token per round itself
        drafts, q = drafter.propose(seq, min(k, budget - 1), temperature, generator) if budget > 1 \
            else ([], None)
        logits = ts.extend(seq[ts.length:] + drafts)[-(len(drafts) + 1):]
        stats.target_forwards += 1
        n_ok, token = _verify(logits, drafts, q, temperature, generator)
        stats.rounds += 1
        stats.proposed += len(drafts)
        stats.accepted += n_ok
        stats.k_history.append(k)
        new = drafts[:n_ok] + [token]
        if eos_token_id is not None and eos_token_id in new:
            new = new[: new.index(eos_token_id) + 1]
        seq += new
        # both caches agree with the new sequence on all but its last token (the target's own)
        ts.crop(len(seq) - 1)
        drafter.accepted(len(seq) - 1)
        if adaptive and drafts:
            if n_ok == len(drafts):
                k = min(max_k, k + 1)
            elif n_ok == 0:
                k = max(1, k - 1)
        if eos_token_id is not None and seq[-1] == eos_token_id:
            break
    out = seq[n0:][:max_new_tokens]
    stats.new_tokens = len(out)
    return out, stats
