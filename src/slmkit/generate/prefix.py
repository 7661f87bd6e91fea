"""A prefix cache for slmkit's PyTorch engine: the KV cache of recent prompts, one row each, so a
prompt that starts as one of them (a repeated system prompt, the earlier turns of a chat) computes
only the rest.

    prefixes = PrefixCache(model, max_bytes=256 << 20)
    engine = Engine(model, tokenizer, prefix_cache=prefixes)
    prefixes.cached(prompt)        # tokens of `prompt` a prefill would take from the cache
    prefixes.reused                # prompt tokens taken from it so far

`prefill(prompts, pad_id)` is `KVBatch.prefill` with hits taken from the cache: prompts without a
hit are prefilled together (left-padded), each hit is one row extended from its cached prefix,
and the rows are put back in the prompts' order. Every prompt prefilled is stored (least recently
used dropped beyond `max_bytes`). A model with sliding-window layers (Gemma 3) is not cached: its
windowed layers keep positions relative to the padded batch.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers import DynamicCache

from slmkit.generate.kv import KVBatch
from slmkit.runtime.llamacpp_batch import common_prefix


class PrefixCache:
    """The KV cache of recent prompts of one PyTorch model (see the module docstring)."""

    def __init__(self, model, max_bytes: int, *, narrow: bool = True, min_tokens: int = 16):
        self.model, self.max_bytes, self.narrow, self.min_tokens = model, max_bytes, narrow, min_tokens
        types = getattr(model.config, "layer_types", None) or []
        self.enabled = max_bytes > 0 and not any("sliding" in str(t) for t in types)
        self._entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._bytes = 0
        self.reused = 0

    def cached(self, prompt: list[int]) -> int:
        """Tokens of `prompt` a prefill would take from the cache (all but the last at most)."""
        return self._best(prompt)[1]

    def _best(self, prompt: list[int]) -> tuple[tuple[int, ...] | None, int]:
        best, n = None, 0
        for key in self._entries:
            common = common_prefix(key, prompt)
            if common > n:
                best, n = key, common
        n = min(n, len(prompt) - 1)
        return (best, n) if n >= self.min_tokens else (None, 0)

    def prefill(self, prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, KVBatch]:
        """`KVBatch.prefill(model, prompts, pad_id)`, taking what the cache holds of each prompt."""
        if not self.enabled:
            return KVBatch.prefill(self.model, prompts, pad_id, self.narrow)
        hits = {i: self._best(p) for i, p in enumerate(prompts)}
        hits = {i: h for i, h in hits.items() if h[0] is not None}
        misses = [i for i in range(len(prompts)) if i not in hits]
        parts: list[tuple[torch.Tensor, KVBatch]] = []
        if misses:
            logits, state = KVBatch.prefill(self.model, [prompts[i] for i in misses], pad_id, self.narrow)
            width = state.mask.shape[1]
            for row, i in enumerate(misses):
                self._store(prompts[i], state, row, width - len(prompts[i]))
            parts.append((logits, state))
        for i, (key, n) in hits.items():
            self._entries.move_to_end(key)
            state = self._state(self._entries[key], n)
            logits = state.extend(prompts[i][n:])
            self.reused += n
            self._store(prompts[i], state, 0, 0)
            parts.append((logits, state))
        logits = torch.cat([p[0] for p in parts])
        state = parts[0][1]
        for _, other in parts[1:]:
            state = state.merge(other)
        order = misses + list(hits)                  # row r of `state` is prompt order[r]
        back = [order.index(i) for i in range(len(prompts))]
        if back != list(range(len(prompts))):
            state.select(back)
            logits = logits[back]
        return logits, state

    def remember(self, prompt: list[int], state: KVBatch) -> None:
        """Keep the KV of `prompt`, the whole of a one-row `state` (a prompt prefilled in chunks)."""
        if self.enabled:
            self._store(prompt, state, 0, 0)

    def _state(self, layers: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> KVBatch:
        """A one-row state holding the first `n` tokens of a cached prompt."""
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(layers):
            cache.update(k[:, :, :n].clone(), v[:, :, :n].clone(), i)
        return KVBatch(self.model, cache, torch.ones(1, n, dtype=torch.long), torch.tensor([n - 1]), self.narrow)

    def _store(self, prompt: list[int], state: KVBatch, row: int, start: int) -> None:
        """Keep row `row` of `state` (its tokens from `start`) as the KV of `prompt`."""
        if len(prompt) < self.min_tokens:
            return
        key = tuple(prompt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        layers = [(layer.keys[row:row + 1, :, start:start + len(prompt)].clone(),
                   layer.values[row:row + 1, :, start:start + len(prompt)].clone()) for layer in state.cache.layers]
        size = sum(k.nbytes + v.nbytes for k, v in layers)
        if size > self.max_bytes:
            return
        self._entries[key] = layers
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= sum(k.nbytes + v.nbytes for k, v in dropped)

