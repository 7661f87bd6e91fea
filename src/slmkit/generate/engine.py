"""THE decode loop: a step-level engine over a batch of sequences that join and leave at any step.

    engine = Engine(model, tokenizer)
    a = engine.add(prompt_ids, Sampling(max_new_tokens=64))      # waits for the next step
    for out in engine.step(): ...        # every active sequence advances one token
    engine.remove(a)                     # drop a sequence early (e.g. a closed connection)
    done = engine.result(a)              # a Completion once finished

A step first decodes one token for every running sequence (one forward over the batch), then
prefills the sequences added since the last step (one forward over their prompts, left-padded) and
merges them into the batch, so a new request waits at most one step, never for others to finish.
Each sequence has its own sampling settings and random stream, so what it generates does not
depend on which others share its batch (up to float rounding of the padded matmuls). The
per-sequence state is `slmkit.generate.kv.KVBatch` for a PyTorch model; any other `model` with a
`prefill(prompts) -> (logits, state)` whose state has KVBatch's decode / merge / select runs the
same loop (`slmkit.runtime.llamacpp_batch.LlamaCppContext`: llama.cpp's kernels). A prefix
cache (`prefix_cache`: `slmkit.generate.prefix.PrefixCache` for a PyTorch model; llama.cpp's
context is its own) gives prompts the KV of a prefix seen before, and only the tokens it does not
hold count against `prefill_chunk`. A `speculator` (`slmkit.collab.speculative.Speculator`, a
draft model) makes each step of a sequence running alone a speculative round: several tokens
per forward of the model, the same tokens greedy, the same distribution sampled. `generate()` is
the simple call on top.

A `picker` replaces the per-sequence draw with one choice over all rows of a forward: it gets the
rows' float32 logits [rows, vocab] and their completions so far, and returns one token per row
(stop rules and log-probabilities still apply). Self-generated calibration uses it for its
batch-wide random stream, temperature schedule and document restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from slmkit.errors import SlmkitError
from slmkit.generate.kv import KVBatch
from slmkit.generate.sampling import Sampling, next_token, token_logprobs
from slmkit.models.introspect import eos_ids, pad_id


@dataclass
class StepOutput:
    """One token one sequence produced in a step."""
    id: int
    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None   # "stop" (eos or a stop string), "length", or None: going on


@dataclass
class Completion:
    """A finished sequence."""
    id: int
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finish_reason: str | None = None   # "stop", "length" or "abort" (removed early)
    text: str | None = None            # decoded (without special tokens), cut before a stop string


Picker = Callable[[torch.Tensor, "list[Completion]"], "list[int]"]


class _Seq:
    def __init__(self, sid: int, prompt: list[int], s: Sampling):
        self.done = Completion(sid, list(prompt), logprobs=[] if s.logprobs is not None else None,
                               top_logprobs=[] if s.logprobs else None)
        self.s = s
        self.generator = None
        if s.seed is not None:
            self.generator = torch.Generator().manual_seed(s.seed)

    def seen(self) -> torch.Tensor | None:
        if self.s.repetition_penalty == 1.0:
            return None
        return torch.tensor(sorted(set(self.done.prompt_ids + self.done.token_ids)), dtype=torch.long)


class Engine:
    """A step-level decoding engine for one Hugging Face causal LM (see the module docstring).

    `max_batch`: sequences decoded together at most; later ones wait. `narrow`: run few-token
    forwards through `slmkit.models.narrow` (faster on CPUs, same computation). `picker`: one
token choice over all rows of a forward instead of each sequence's own (see the module docstring)."""

    def __init__(self, model, tokenizer=None, *, max_batch: int = 16, narrow: bool = True,
                 picker: Picker | None = None, prefill_chunk: int | None = None, prefix_cache=None,
                 speculator=None):
        if max_batch < 1:
            raise SlmkitError(f"max_batch must be >= 1, not {max_batch!r}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise SlmkitError(f"prefill_chunk must be >= 1 or None, not {prefill_chunk!r}")
        self.prefill_chunk = prefill_chunk
        if isinstance(model, torch.nn.Module):
            model = model.eval()
        elif not callable(getattr(model, "prefill", None)):
            raise SlmkitError(f"{type(model).__name__} is neither a PyTorch model nor has prefill(prompts)")
        self.model, self.tokenizer = model, tokenizer
        if prefix_cache is None and callable(getattr(model, "cached", None)):
            prefix_cache = model                # llama.cpp: its streams keep finished sequences' caches
        self.prefixes = prefix_cache
        if speculator is not None and not isinstance(model, torch.nn.Module):
            raise SlmkitError("speculative decoding runs on a PyTorch model's engine, not on "
                              f"{type(model).__name__}")
        self.speculator = speculator
        self.max_batch, self.narrow, self.picker = max_batch, narrow, picker
        self.eos = eos_ids(model, tokenizer)
        self.pad = pad_id(tokenizer) if tokenizer is not None else 0
        self._next_id = 0
        self._waiting: list[_Seq] = []
        self._running: list[_Seq] = []      # in the order of the state's rows
        self._chunked: _Seq | None = None    # a long prompt being prefilled a chunk per step
        self._chunk_state, self._chunk_fed = None, 0
        self._state: KVBatch | None = None
        self._finished: dict[int, Completion] = {}

    def add(self, prompt_ids: Sequence[int], sampling: Sampling | None = None) -> int:
        """Queue a sequence; it starts at the next step. Returns its id."""
        s = sampling or Sampling()
        if not prompt_ids:
            raise SlmkitError("a prompt needs at least one token")
        if s.stop and self.tokenizer is None:
            raise SlmkitError("stop strings need the engine to have a tokenizer")
        seq = _Seq(self._next_id, list(prompt_ids), s)
        self._next_id += 1
        self._waiting.append(seq)
        return seq.done.id

    def has_work(self) -> bool:
        return bool(self._waiting or self._running or self._chunked)

    def step(self) -> list[StepOutput]:
        """Advance every running sequence by one token and start waiting ones (up to max_batch).
        With `prefill_chunk`, a step prefills at most that many prompt tokens: waiting prompts
        that fit start whole, and one longer prompt advances by what is left (its first token
        comes with its last chunk), so a long prompt never stalls the running sequences for more
        than a chunk."""
        outs: list[StepOutput] = []
        if self._alone():
            outs += self._speculate(self._running[0])
        elif self._running:
            logits = self._state.decode([q.done.token_ids[-1] for q in self._running])
            outs += self._advance(self._running, logits)
        room = self.max_batch - len(self._running) - (self._chunked is not None)
        budget = self.prefill_chunk
        new = []
        for q in list(self._waiting):                # in order, skipping prompts over the budget
            if len(new) >= room:
                break
            size = self._new_tokens(q.done.prompt_ids)
            if budget is not None and size > budget:
                continue
            new.append(q)
            self._waiting.remove(q)
            budget = None if budget is None else budget - size
        if new:
            logits, state = self._prefill([q.done.prompt_ids for q in new])
            outs += self._advance(new, logits)
            self._join(new, state)
        if budget and (self._chunked is not None or (self._waiting and len(new) < room)):
            outs += self._feed_chunk(budget)
        self._drop_finished()
        return outs

    def _feed_chunk(self, budget: int) -> list[StepOutput]:
        """Prefill the next `budget` tokens of the chunked prompt (taking the next waiting one
        when none is under way); after its last chunk it samples and joins the batch."""
        if self._chunked is None:
            q = self._waiting.pop(0)
            cached = len(q.done.prompt_ids) - self._new_tokens(q.done.prompt_ids)
            self._chunked, self._chunk_state, self._chunk_fed = q, None, cached
        q = self._chunked
        end = min(self._chunk_fed + budget, len(q.done.prompt_ids))
        if self._chunk_state is None:              # the first chunk (after what the cache holds)
            logits, self._chunk_state = self._prefill([q.done.prompt_ids[:end]])
        else:
            logits = self._chunk_state.extend(q.done.prompt_ids[self._chunk_fed:end])
        self._chunk_fed = end
        if self._chunk_fed < len(q.done.prompt_ids):
            return []
        state, self._chunked, self._chunk_state = self._chunk_state, None, None
        if callable(getattr(self.prefixes, "remember", None)):
            self.prefixes.remember(q.done.prompt_ids, state)
        outs = self._advance([q], logits)
        self._join([q], state)
        return outs

    def _join(self, seqs: list[_Seq], state) -> None:
        self._state = state if self._state is None else self._state.merge(state)
        self._running += seqs

    def remove(self, seq_id: int) -> Completion | None:
        """Stop a waiting or running sequence now -> its completion so far (finish "abort");
        None for an unknown or already finished id."""
        for q in self._waiting:
            if q.done.id == seq_id:
                self._waiting.remove(q)
                self._finish(q, "abort")
                return self._finished.pop(seq_id)
        if self._chunked is not None and self._chunked.done.id == seq_id:
            q, self._chunked = self._chunked, None
            if self._chunk_state is not None:
                self._chunk_state.select([])       # frees its cache
            self._chunk_state = None
            self._finish(q, "abort")
            return self._finished.pop(seq_id)
        for q in self._running:
            if q.done.id == seq_id and q.done.finish_reason is None:
                self._finish(q, "abort")
                self._drop_finished()
                return self._finished.pop(seq_id)
        return None

    def result(self, seq_id: int) -> Completion | None:
        """The completion of a finished sequence (handed out once), or None while it runs."""
        return self._finished.pop(seq_id, None)

    def run(self) -> None:
        """Step until every added sequence has finished."""
        while self.has_work():
            self.step()

    # ---- internals ------------------------------------------------------------------------
    @property
    def reused(self) -> int:
        """Prompt tokens taken from the prefix cache so far (0 without one)."""
        return getattr(self.prefixes, "reused", 0)

    def _alone(self) -> bool:
        """Whether this step is a speculative round: one sequence running, none waiting, and its
        sampling one the rejection rule keeps exact (a temperature alone, no log-probabilities)."""
        if self.speculator is None or len(self._running) != 1 or self._waiting or self._chunked or self.picker:
            return False
        s = self._running[0].s
        return (s.logprobs is None and s.top_p == 1.0 and not s.top_k and s.repetition_penalty == 1.0)

    def _speculate(self, q: _Seq) -> list[StepOutput]:
        d = q.done
        temperature = 0.0 if q.s.greedy else q.s.temperature
        new = self.speculator.advance(d.id, d.prompt_ids + d.token_ids, self._state, temperature,
                                      q.s.max_new_tokens - len(d.token_ids), q.generator)
        outs = []
        for token in new:
            outs.append(self._record(q, token, None, None))
            if d.finish_reason is not None:
                break
        return outs

    def _new_tokens(self, prompt: list[int]) -> int:
        """Tokens of `prompt` a prefill computes: all but what the prefix cache holds."""
        return len(prompt) - (self.prefixes.cached(prompt) if self.prefixes is not None else 0)

    def _prefill(self, prompts: list[list[int]]):
        if not isinstance(self.model, torch.nn.Module):
            return self.model.prefill(prompts)
        if self.prefixes is not None:
            return self.prefixes.prefill(prompts, self.pad)
        return KVBatch.prefill(self.model, prompts, self.pad, self.narrow)

    def _advance(self, seqs: list[_Seq], logits: torch.Tensor) -> list[StepOutput]:
        if self.picker is None:
            picks = [next_token(row, q.s, q.generator, q.seen()) for q, row in zip(seqs, logits)]
        else:
            tokens = self.picker(logits, [q.done for q in seqs])
            picks = [(t, *token_logprobs(row, t, q.s.logprobs)) for q, row, t in zip(seqs, logits, tokens)]
        return [self._record(q, *pick) for q, pick in zip(seqs, picks)]

    def _record(self, q: _Seq, token: int, logprob: float | None, top) -> StepOutput:
        d = q.done
        d.token_ids.append(token)
        if d.logprobs is not None:
            d.logprobs.append(logprob)
        if d.top_logprobs is not None:
            d.top_logprobs.append(top)
        reason = None
        if (token in self.eos and not q.s.ignore_eos) or token in q.s.stop_token_ids:
            reason = "stop"
        elif q.s.stop and self._hit_stop(q):
            reason = "stop"
        elif len(d.token_ids) >= q.s.max_new_tokens:
            reason = "length"
        if reason:
            self._finish(q, reason)
        return StepOutput(d.id, token, logprob, top, reason)

    def _hit_stop(self, q: _Seq) -> bool:
        """Whether the text now holds a stop string (then `text` is cut before its first one).
        Only the last tokens that can hold a new stop string are decoded each step (a character
        takes at most 4 byte-level tokens), the whole text once a stop string shows there."""
        tail = q.done.token_ids[-(4 * max(len(s) for s in q.s.stop) + 4):]
        recent = self.tokenizer.decode(tail, skip_special_tokens=True)
        if not any(s in recent for s in q.s.stop):
            return False
        text = self.tokenizer.decode(q.done.token_ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in q.s.stop) if i >= 0), default=-1)
        if cut < 0:
            return False
        q.done.text = text[:cut]
        return True

    def _finish(self, q: _Seq, reason: str) -> Completion:
        d = q.done
        d.finish_reason = reason
        if d.text is None and self.tokenizer is not None:
            d.text = self.tokenizer.decode(d.token_ids, skip_special_tokens=True)
        self._finished[d.id] = d
        return d

    def _drop_finished(self) -> None:
        keep = [i for i, q in enumerate(self._running) if q.done.finish_reason is None]
        if len(keep) == len(self._running):
            return
        self._running = [self._running[i] for i in keep]
        self._state.select(keep)     # frees the finished rows' cache (all of it when none is left)
        if not keep:
            self._state = None


def generate(model, tokenizer, prompts: Sequence[str | Sequence[int]], sampling: Sampling | None = None,
             *, max_batch: int = 16, narrow: bool = True) -> list[Completion]:
    """Completions of `prompts` (texts, tokenized without special tokens, or token-id lists), in
    order, all with the same `sampling` (with a seed, prompt i samples with seed + i)."""
    engine = Engine(model, tokenizer, max_batch=max_batch, narrow=narrow)
    s = sampling or Sampling()
    ids = []
    for i, p in enumerate(prompts):
        toks = tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
        per = s if s.seed is None else replace(s, seed=s.seed + i)
        ids.append(engine.add(toks, per))
    engine.run()
    return [engine.result(i) for i in ids]
