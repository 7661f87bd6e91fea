"""The KV-cache argument under the name the installed transformers takes (`cache` from 5.24,
`past_key_values` before): no deprecated name reaches the model, and cached decoding still
equals a full forward."""

import warnings

import pytest
import torch

from slmkit.collab import LocalLM
from slmkit.eval.speed import _decode
from slmkit.generate.selfgen import generate_calibration_text
from slmkit.models.kvcache import cache_argument, cache_kwargs, output_cache
from slmkit.models.tiny import tiny_model


class _New:
    def forward(self, input_ids=None, cache=None, use_cache=None):
        pass


class _Old:
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        pass


def test_the_name_follows_the_forward_signature():
    assert cache_argument(_New) == "cache"
    assert cache_argument(_Old) == "past_key_values"
    assert cache_kwargs(_Old(), 7) == {"past_key_values": 7}


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text", "gpt2", "opt"])
def test_real_models_take_the_name_we_pass(model_type):
    import inspect

    model = tiny_model(model_type, seed=0)
    assert cache_argument(type(model)) in inspect.signature(type(model).forward).parameters


def test_local_session_speed_and_selfgen_pass_no_deprecated_name(tiny_tok):
    model = tiny_model("llama", seed=0).eval()
    ids = [5, 9, 2, 7, 11, 3]
    full = model(input_ids=torch.tensor([ids])).logits[0].float()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        s = LocalLM(model, tiny_tok).session()
        first = s.extend(ids[:4])
        rest = s.extend(ids[4:])
        _decode(model, torch.tensor([ids]), 3)
        generate_calibration_text(model, tiny_tok, n=2, length=8, seed=0, cache=False)
    torch.testing.assert_close(torch.cat([first, rest]), full, atol=1e-4, rtol=1e-4)


def test_output_cache_reads_the_returned_cache():
    from transformers import DynamicCache

    model = tiny_model("qwen2", seed=0).eval()
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **cache_kwargs(model, cache))
    assert output_cache(out) is cache
    assert output_cache(out).get_seq_length() == 3
