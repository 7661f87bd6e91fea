"""llama.cpp through llama-cpp-python (the optional extra): slmkit's GGUF exports score in
llama.cpp as in PyTorch, llama.cpp quantizes them, and without the extra everything says how to
get it. Skipped when llama-cpp-python is not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.eval.scoring import score_requests
from slmkit.models import tiny
from slmkit.models.gguf_export import describe_gguf, export_gguf
from slmkit.runtime import llamacpp

needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                    reason="llama-cpp-python (slmkit[llamacpp]) is not installed")


@needs_llamacpp
def test_llama_cpp_scores_an_exported_model_as_pytorch_does(tmp_path):
    model = tiny.tiny_model("llama", initializer_range=0.1)
    path = export_gguf(model, tiny.tiny_tokenizer(), tmp_path / "m.gguf", "f32")
    ids = torch.randint(3, 500, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    ours = score_requests(model, [(ids, 10)])[0]
    with llamacpp.LlamaCppModel(path, n_ctx=64, threads=1) as lm:
        logprob, n, _ = lm.score(ids, 10)
        assert n == ours.n_tokens == 30
        assert logprob == pytest.approx(ours.logprob, rel=1e-3)
        assert lm.decode_speed(ids[:8], 4) > 0
        with pytest.raises(SlmkitError, match="n_ctx < len"):
            lm.score(ids[:5], 5)
        with pytest.raises(SlmkitError, match="exceed the context"):
            lm.decode_speed(ids, 40)


@needs_llamacpp
def test_llama_cpp_quantizes_an_exported_model(tmp_path):
    model = tiny.tiny_model("qwen2", initializer_range=0.1, intermediate_size=256)
    src = export_gguf(model, tiny.tiny_tokenizer(), tmp_path / "m.gguf", "f32")
    out = llamacpp.quantize_gguf(src, tmp_path / "q8.gguf", "Q8_0", threads=1)
    assert describe_gguf(out)["tensor_types"]["blk.0.ffn_up.weight"] == "Q8_0"
    assert out.stat().st_size < src.stat().st_size and not list(tmp_path.glob(".*partial"))
    with pytest.raises(SlmkitError, match="no file type 'Q4_Z'"):
        llamacpp.quantize_gguf(src, tmp_path / "x.gguf", "Q4_Z")
    with pytest.raises(SlmkitError, match="no such GGUF file"):
        llamacpp.quantize_gguf(tmp_path / "absent.gguf", tmp_path / "x.gguf", "Q8_0")


def test_without_the_extra_the_reason_names_the_install_command(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_llama(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'", name="llama_cpp")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama)
    reason = llamacpp.missing()
    assert reason.startswith("llama.cpp rows skipped") and "slmkit[llamacpp]" in reason
    with pytest.raises(SlmkitError, match="slmkit\\[llamacpp\\]"):
        llamacpp.LlamaCppModel("x.gguf")


@needs_llamacpp
def test_slmkit_perplexity_runs_on_a_gguf_file_in_llama_cpp(tmp_path):
    from slmkit.data.sources import TextData
    from slmkit.eval.perplexity import PerplexityConfig, perplexity

    model = tiny.tiny_model("qwen2", initializer_range=0.1)
    tok = tiny.tiny_tokenizer()
    path = export_gguf(model, tok, tmp_path / "m.gguf", "f32")
    data = TextData("t", ["def f(x):\n    return x + 1\n" * 6, "import os\nprint(os.getcwd())\n" * 6])
    cfg = PerplexityConfig(protocols=["window"], window=32)
    ours = perplexity(model, tok, data, cfg)["window"]
    with llamacpp.LlamaCppModel(path, n_ctx=64, threads=1) as lm:
        theirs = perplexity(lm, tok, data, cfg)["window"]
    assert theirs["tokens_scored"] == ours["tokens_scored"] > 32
    assert theirs["token_perplexity"] == pytest.approx(ours["token_perplexity"], rel=1e-3)


@needs_llamacpp
@pytest.mark.parametrize("chunk", [None, 4])
def test_a_cached_prefix_is_reused_and_changes_no_token(tmp_path, chunk):
    """A prompt that starts as a finished sequence's did takes that prefix from its stream's cache
    (whole or in prefill chunks) and decodes the same tokens as with nothing cached."""
    from slmkit.generate import Engine, Sampling
    from slmkit.runtime.llamacpp_batch import LlamaCppContext

    model = tiny.tiny_model("llama", initializer_range=0.1)
    path = export_gguf(model, tiny.tiny_tokenizer(), tmp_path / "m.gguf", "f32")
    g = torch.Generator().manual_seed(0)
    system = torch.randint(3, 500, (30,), generator=g).tolist()
    asks = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (5, 9)]
    greedy = Sampling(max_new_tokens=6, temperature=0, ignore_eos=True)

    def run(ctx, prompt):
        engine = Engine(ctx, None, prefill_chunk=chunk)
        sid = engine.add(prompt, greedy)
        engine.run()
        return engine.result(sid).token_ids

    cold = LlamaCppContext(path, seq_ctx=64, n_seq=2, threads=1)
    want = []
    for a in asks:
        cold.reset()
        want.append(run(cold, system + a))
    assert cold.reused == 0
    warm = LlamaCppContext(path, seq_ctx=64, n_seq=2, threads=1)
    assert run(warm, system + asks[0]) == want[0]
    assert warm.cached(system + asks[1]) == 30 and warm.cached(asks[1]) == 0
    assert run(warm, system + asks[1]) == want[1]
    assert warm.reused == 30
    assert run(warm, system + asks[1]) == want[1]            # the whole prompt held: its last token recomputed
    assert warm.reused == 30 + 30 + 9 - 1
    cold.close()
    warm.close()
