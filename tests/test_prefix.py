"""The PyTorch engine's prefix cache: prompts that start as an earlier one take that prefix's KV
from the cache, and decode exactly the tokens they would without it."""

from __future__ import annotations

import pytest
import torch

from slmkit.generate import Engine, Sampling
from slmkit.generate.prefix import PrefixCache
from slmkit.models.tiny import tiny_model

GEN = torch.Generator().manual_seed(3)
SYSTEM = torch.randint(3, 500, (40,), generator=GEN).tolist()
ASKS = [torch.randint(3, 500, (n,), generator=GEN).tolist() for n in (4, 11, 7)]
OTHER = torch.randint(3, 500, (25,), generator=GEN).tolist()
GREEDY = Sampling(max_new_tokens=8, temperature=0, ignore_eos=True)


def run(model, prompts, **kw) -> list[list[int]]:
    engine = Engine(model, None, **kw)
    ids = [engine.add(p, GREEDY) for p in prompts]
    engine.run()
    return [engine.result(i).token_ids for i in ids]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("chunk", [None, 5])
def test_cached_prefixes_change_no_token(arch, chunk):
    model = tiny_model(arch).float()
    prompts = [SYSTEM + a for a in ASKS] + [OTHER]
    want = [run(model, [p])[0] for p in prompts]
    prefixes = PrefixCache(model, 64 << 20)
    assert run(model, [prompts[0]], prefill_chunk=chunk, prefix_cache=prefixes) == want[:1]
    assert prefixes.cached(prompts[1]) == 40 and prefixes.cached(OTHER) == 0
    # one step: two hits and a miss together, put back in the prompts' order
    assert run(model, prompts[1:], prefill_chunk=chunk, prefix_cache=prefixes) == want[1:]
    assert prefixes.reused == 80
    assert prefixes.cached(prompts[2] + [9, 9]) == len(prompts[2])     # every prefilled prompt is kept


def test_the_cache_keeps_within_its_bytes_and_skips_sliding_window_models():
    model = tiny_model("llama").float()
    one = PrefixCache(model, 10 << 20)
    run(model, [SYSTEM], prefix_cache=one)
    size = one._bytes
    small = PrefixCache(model, int(size * 1.5))              # room for one prompt's KV
    run(model, [SYSTEM, OTHER], prefix_cache=small)
    assert small._bytes <= small.max_bytes and small.cached(SYSTEM + [5]) == 0 and small.cached(OTHER + [5]) == 25
    gemma = tiny_model("gemma3_text").float()
    assert not PrefixCache(gemma, 10 << 20).enabled
