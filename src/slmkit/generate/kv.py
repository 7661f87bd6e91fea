"""The decoding state of a batch of sequences: one KV cache whose rows are left-padded to a common
length, an attention mask that hides the padding, and each row's own position.

Rows join and leave between steps: `prefill` makes a state for new prompts, `merge` pads two states
to one length and stacks them, `select` keeps some rows (and drops padding every row has). Each row
computes what it would alone, up to the rounding of the padded matmuls. Sliding-window layers
(Gemma 3) keep the last `window - 1` positions of the padded sequence, as a batch-1 cache keeps them
of the real one.

`Session` is the state of one sequence that can also roll back (`crop`), which speculative
decoding needs after rejected drafts.

A recurrent model's state (one fixed-size tensor per row) would implement the same four methods.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from slmkit.errors import SlmkitError
from slmkit.models.introspect import accepts_logits_to_keep
from slmkit.models.kvcache import cache_kwargs, output_cache
from slmkit.models.narrow import narrow_linears


def _stored(layer, length: int) -> int:
    """How many positions a layer keeps of a (padded) sequence of `length`."""
    window = getattr(layer, "sliding_window", None)
    return min(length, window - 1) if getattr(layer, "is_sliding", False) and window else length


class KVBatch:
    """KV-cached decoding state of `rows` sequences (see the module docstring)."""

    def __init__(self, model, cache, mask: torch.Tensor, positions: torch.Tensor, narrow: bool = True):
        self.model, self.cache, self.narrow = model, cache, narrow
        self._extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        self.mask = mask              # [rows, length] 1 = a real token, 0 = left padding
        self.positions = positions    # [rows] position id of each row's last token

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @classmethod
    def prefill(cls, model, prompts: list[list[int]], pad_id: int = 0,
                narrow: bool = True) -> tuple[torch.Tensor, "KVBatch"]:
        """Run the prompts (left-padded) -> (next-token logits [rows, vocab] float32, their state)."""
        if not prompts or any(not p for p in prompts):
            raise SlmkitError("a batch needs at least one prompt, and no prompt may be empty")
        cache = DynamicCache(config=model.config)
        width = max(len(p) for p in prompts)
        if not any(getattr(layer, "is_sliding", False) for layer in cache.layers):
            width = _bucket(width)           # (a sliding window would count the padding)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        state = cls(model, cache, mask, positions[:, -1], narrow)
        logits = state._forward(ids, positions)
        state._trim()                        # the bucket's padding every row has
        return logits, state

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """Append one token to every row -> next-token logits [rows, vocab] float32."""
        if len(tokens) != self.rows:
            raise SlmkitError(f"decode got {len(tokens)} tokens for {self.rows} rows")
        self.mask = torch.cat([self.mask, torch.ones(self.rows, 1, dtype=torch.long)], 1)
        return self._forward(torch.tensor(tokens)[:, None], self.positions[:, None] + 1)

    def extend(self, ids: list[int]) -> torch.Tensor:
        """Append `ids` to a one-row state (the next chunk of a prompt) -> the next-token
        logits after them [1, vocab] float32."""
        if self.rows != 1 or not ids:
            raise SlmkitError("extend() takes a non-empty chunk for a state of one row")
        n = len(ids)
        self.mask = torch.cat([self.mask, torch.ones(1, n, dtype=torch.long)], 1)
        positions = self.positions[:, None] + 1 + torch.arange(n)[None, :]
        return self._forward(torch.tensor([ids]), positions)

    def verify(self, ids: list[int]) -> torch.Tensor:
        """Append `ids` to a one-row state -> the next-token logits after each of them
        [len(ids), vocab] float32 (speculative decoding checks draft tokens with these)."""
        if self.rows != 1 or not ids:
            raise SlmkitError("verify() takes a non-empty list of tokens for a state of one row")
        n = len(ids)
        self.mask = torch.cat([self.mask, torch.ones(1, n, dtype=torch.long)], 1)
        positions = self.positions[:, None] + 1 + torch.arange(n)[None, :]
        logits = self._forward(torch.tensor([ids]), positions, keep=n)
        return logits if n == 1 else logits[0]        # [1, vocab] for one token, else [1, n, vocab]

    def crop(self, length: int) -> None:
        """Keep the first `length` tokens of a one-row state without padding (rejected drafts out)."""
        if self.rows != 1 or int(self.mask.sum()) != self.mask.shape[1]:
            raise SlmkitError("crop() takes a state of one row without padding")
        if length < self.mask.shape[1]:
            self.cache.crop(length - self.mask.shape[1])  # transformers 5.2x: minus the tokens to drop
            self.mask = self.mask[:, :length]
            self.positions = torch.tensor([length - 1])

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Logits after the last `keep` tokens of each row ([rows, vocab] for 1, else [rows, keep, vocab])."""
        extra = {"logits_to_keep": keep} if self._extra else {}
        with torch.inference_mode(), _narrow(self.model, self.narrow):
            out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                             use_cache=True, **cache_kwargs(self.model, self.cache), **extra)
        self.cache, self.positions = output_cache(out), positions[:, -1]
        return out.logits[:, -1].float() if keep == 1 else out.logits[:, -keep:].float()

    def merge(self, other: "KVBatch") -> "KVBatch":
        """Stack `other`'s rows under this state's (both padded on the left to one length)."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            keep = _stored(mine, length)
            mine.keys = torch.cat([_pad(mine.keys, keep), _pad(theirs.keys, keep)])
            mine.values = torch.cat([_pad(mine.values, keep), _pad(theirs.values, keep)])
            if hasattr(mine, "cumulative_length"):
                mine.cumulative_length = length
        self.mask = torch.cat([_pad(self.mask, length), _pad(other.mask, length)])
        self.positions = torch.cat([self.positions, other.positions])
        return self

    def select(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), and drop the padding every kept row has."""
        index = torch.tensor(rows, dtype=torch.long)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self._trim()

    def _trim(self) -> None:
        """Drop the left padding every row has."""
        if any(getattr(layer, "is_sliding", False) for layer in self.cache.layers):
            return  # a sliding window counts positions from the start: keep them
        shared = int((self.mask.cumsum(-1) == 0).sum(-1).min()) if self.rows else 0
        if shared:
            self.mask = self.mask[:, shared:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, shared:], layer.values[:, :, shared:]


def _bucket(n: int) -> int:
    """The padded width of a prefill of prompts of at most `n` tokens: the next power of two up to
    64, then the next multiple of 64. Few distinct shapes: oneDNN keeps a primitive (and glibc the
    scratch memory) per matmul shape, and a server prefilling every width grew its resident memory
    by ~100 MB a minute."""
    return 1 << (n - 1).bit_length() if n <= 64 else -(-n // 64) * 64


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad the sequence dimension (-2 for cache tensors [rows, heads, seq, dim], -1 for a
    mask [rows, seq]) with zeros to `length`."""
    dim = -1 if t.dim() == 2 else -2
    missing = length - t.shape[dim]
    if missing <= 0:
        return t
    return F.pad(t, (missing, 0)) if dim == -1 else F.pad(t, (0, 0, missing, 0))


def _narrow(model, on: bool):
    return narrow_linears(model) if on else contextlib.nullcontext()


class Session:
    """A KV-cached pass over one token sequence of a local model."""

    def __init__(self, model, narrow: bool = True):
        self.model, self.narrow = model, narrow
        self.cache = DynamicCache(config=model.config)
        self.length = 0
        self._keeps = accepts_logits_to_keep(model)

    def extend(self, ids: list[int], keep: int | None = None) -> "torch.Tensor":
        """Feed `ids` after what is cached -> logits [len(ids), vocab] (float32), or only the
        last `keep` rows (the output head then runs on those alone: a prompt's logits are most
        of a prefill's head cost, 150k x 1.5k weights per token for Qwen2.5-1.5B)."""
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
