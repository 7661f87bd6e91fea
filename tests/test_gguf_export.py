"""GGUF export: tiny models of every supported architecture round-trip through transformers' GGUF
loader (weights, tied head, tokenizer), quantized files stay close and shrink, errors are clear."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.models import gguf_export as ge
from slmkit.models import tiny
from slmkit.models.gguf_export import describe_gguf, export_gguf
from slmkit.models.gguf_tokenizer import detect_pre

SAMPLE = "def add(x, y):\n    return x + y  # The quick brown fox, 2024!\n\nÜnïcode  spaces"
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text"]
# the file holds what llama.cpp needs, but transformers' reader assumes Qwen3's head_dim (128) and
# Gemma 3's 5-local-1-global layer pattern, as every released checkpoint has: build tiny models so
OVERRIDES = {"qwen3": {"head_dim": 128}, "gemma3_text": {"layer_types": ["sliding_attention"] * 2}}
# weights 5x the default init scale, so attention is far from uniform and a wrong rope layout
# (q/k permutation) moves the logits by ~50% instead of ~1%
INIT = 0.1
F16_TOL = 3e-3  # relative L2 error of the logits; measured <= 1e-3 (f16 rounding of the weights)
Q8_TOL, Q4_TOL = 0.05, 0.5  # measured <= 0.025 and <= 0.35; an unrelated random model gives ~1.4


def _model(model_type: str, **kw):
    kw = {"initializer_range": INIT, **OVERRIDES.get(model_type, {}), **kw}
    return tiny.tiny_model(model_type, **kw)


def _reload(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def ids(tiny_tok):
    return tiny_tok(SAMPLE, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("model_type", ARCHS)
def test_f16_round_trip_gives_the_same_logits_and_tokenizer(model_type, tiny_tok, ids, tmp_path):
    from transformers import AutoTokenizer

    model = _model(model_type)
    path = export_gguf(model, tiny_tok, tmp_path / "m.gguf", "f16")
    back = _reload(path)
    # llama.cpp writes mistral as llama; transformers reads it back as the same computation
    assert back.config.model_type == {"mistral": "llama"}.get(model_type, model_type)
    assert _rel(_logits(back, ids), _logits(model, ids)) < F16_TOL
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert tok(SAMPLE)["input_ids"] == tiny_tok(SAMPLE)["input_ids"]
    assert tok.decode(tok(SAMPLE)["input_ids"]) == SAMPLE
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary file left behind


@pytest.mark.parametrize("model_type", ARCHS)
def test_quantized_round_trips_stay_close(model_type, tiny_tok, ids, tmp_path):
    model = _model(model_type)
    ref = _logits(model, ids)
    errors = {}
    for kind in ("q8_0", "q4_0"):
        errors[kind] = _rel(_logits(_reload(export_gguf(model, tiny_tok, tmp_path / f"{kind}.gguf",
                                                        kind)), ids), ref)
    other = _rel(_logits(_model(model_type, seed=1), ids), ref)  # what "unrelated" looks like
    assert errors["q8_0"] < Q8_TOL and errors["q4_0"] < Q4_TOL, errors
    assert errors["q8_0"] < errors["q4_0"] < other / 2.5, (errors, other)


def test_qk_permutation_and_gemma_norm_offset_matter(tiny_tok, ids, tmp_path, monkeypatch):
    """The f16 tolerance is tight enough to catch a missing llama permutation or gemma offset."""
    for model_type, broken in (("llama", {"permute_qk": False}), ("gemma3_text", {"norm_offset": 0.0})):
        model = _model(model_type)
        spec = ge.GGUF_ARCHS[model_type]
        monkeypatch.setitem(ge.GGUF_ARCHS, model_type, ge.GGUFArch(**{**vars(spec), **broken}))
        path = export_gguf(model, tiny_tok, tmp_path / f"{model_type}.gguf", "f16")
        assert _rel(_logits(_reload(path), ids), _logits(model, ids)) > 30 * F16_TOL


def test_file_types_and_sizes(tiny_tok, tmp_path):
    model = _model("llama")
    info = {k: describe_gguf(export_gguf(model, tiny_tok, tmp_path / f"{k}.gguf", k))
            for k in ("f32", "bf16", "f16", "q8_0", "q4_0")}
    sizes = [info[k]["bytes"] for k in ("f32", "f16", "q8_0", "q4_0")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert info["bf16"]["bytes"] == info["f16"]["bytes"]
    n_2d = sum(p.dim() == 2 for p in model.parameters())
    for kind, want in (("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")):
        assert info[kind]["type_counts"] == {want: n_2d, "F32": len(info[kind]["tensor_types"]) - n_2d}
    q4 = info["q4_0"]["tensor_types"]
    assert q4["output.weight"] == "Q8_0" and q4["token_embd.weight"] == "Q4_0"  # untied embedding
    assert q4["blk.0.attn_q.weight"] == "Q4_0" and q4["blk.1.ffn_norm.weight"] == "F32"
    assert all(not v["fallback_tensors"] for v in info.values())


def test_tied_head_is_not_written_and_ties_on_load(tiny_tok, ids, tmp_path):
    model = _model("llama", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    path = export_gguf(model, tiny_tok, tmp_path / "tied.gguf", "q4_0")
    types = describe_gguf(path)["tensor_types"]
    assert "output.weight" not in types and types["token_embd.weight"] == "Q8_0"  # acts as the head
    back = _reload(path)
    assert back.config.tie_word_embeddings and back.lm_head.weight is back.model.embed_tokens.weight
    assert _rel(_logits(back, ids), _logits(model, ids)) < Q4_TOL


def test_rows_not_a_multiple_of_32_fall_back_to_f16(tiny_tok, ids, tmp_path):
    model = _model("llama", hidden_size=48)  # head_dim 12; down_proj rows are 128 long
    path = export_gguf(model, tiny_tok, tmp_path / "odd.gguf", "q8_0")
    info = describe_gguf(path)
    odd = {n for n, t in info["tensor_types"].items() if t == "F16"}
    assert set(info["fallback_tensors"]) == odd
    rows = sorted(p.shape[-1] for p in model.parameters() if p.dim() == 2 and p.shape[-1] % 32)
    assert len(odd) == len(rows) and all(r == 48 for r in rows)
    assert info["tensor_types"]["blk.0.ffn_down.weight"] == "Q8_0"
    assert _rel(_logits(_reload(path), ids), _logits(model, ids)) < Q8_TOL


class _PackedLinear(torch.nn.Module):
    """Stand-in for a slmkit quantized kernel module: int8 codes + per-row scales, no `weight`."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        self.register_buffer("codes", torch.round(w / scale).to(torch.int8))
        self.register_buffer("scale", scale)

    def dense_weight(self) -> torch.Tensor:
        return self.codes.float() * self.scale

    def forward(self, x):
        return torch.nn.functional.linear(x, self.dense_weight())


def test_quantized_kernel_modules_export_their_dense_weight(tiny_tok, ids, tmp_path):
    model = _model("qwen3")
    n_tensors = len(list(model.parameters()))
    mlp = model.model.layers[0].mlp  # a test fixture, not library code: the path is fine here
    mlp.down_proj = _PackedLinear(mlp.down_proj)
    path = export_gguf(model, tiny_tok, tmp_path / "packed.gguf", "f16")
    assert len(describe_gguf(path)["tensor_types"]) == n_tensors
    assert _rel(_logits(_reload(path), ids), _logits(model, ids)) < F16_TOL


def test_tokenizer_metadata(tiny_tok, tmp_path):
    import gguf
    from transformers import AutoTokenizer

    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
    path = export_gguf(_model("qwen2"), tok, tmp_path / "t.gguf", "f16")
    fields = gguf.GGUFReader(path).fields
    value = lambda key: fields[key].contents()  # noqa: E731
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert value("tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert value("tokenizer.ggml.padding_token_id") == tok.pad_token_id
    types = value("tokenizer.ggml.token_type")
    special = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    assert {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL} == special
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert len(value("tokenizer.ggml.merges")) == len(merges)
    assert value("tokenizer.ggml.add_bos_token") is (tok("a")["input_ids"][0] == tok.bos_token_id)
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert back.chat_template == tok.chat_template


@pytest.mark.filterwarnings("ignore:dropping added token")  # GPT2Tokenizer's default unk token
def test_pre_tokenizer_of_a_gguf_source_is_kept(tiny_tok, tmp_path):
    """A model loaded from a GGUF re-exports with that file's pre-tokenizer name, which
    transformers' reader cannot always express in the tokenizer it rebuilds (e.g. "smollm")."""
    from slmkit.models import load

    first = export_gguf(_model("llama"), tiny_tok, tmp_path / "a.gguf", "f16", pre="smollm")
    model, tok = load(first, "float32")
    assert detect_pre(json.loads(tok.backend_tokenizer.to_str())) == "gpt-2"
    assert describe_gguf(export_gguf(model, tok, tmp_path / "b.gguf"))["pre_tokenizer"] == "smollm"


def test_pre_tokenizer_names_follow_the_split_rules():
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    def shape(pre):
        return {"pre_tokenizer": json.loads(pre.__getstate__())}

    assert detect_pre(shape(pre_tokenizers.ByteLevel(add_prefix_space=False))) == "gpt-2"
    smol = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert detect_pre(shape(smol)) == "smollm"
    qwen = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), "isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    assert detect_pre(shape(qwen)) == "qwen2"
    assert detect_pre(shape(pre_tokenizers.Whitespace())) is None


def test_errors_are_clear(tiny_tok, tmp_path):
    with pytest.raises(SlmkitError, match=r"phi3.*supported: gemma3_text, llama, mistral, qwen2, qwen3"):
        export_gguf(tiny.tiny_model("phi3"), tiny_tok, tmp_path / "x.gguf")
    with pytest.raises(SlmkitError, match="causal LM"):
        export_gguf(torch.nn.Linear(2, 2), tiny_tok, tmp_path / "x.gguf")
    model = _model("llama")
    with pytest.raises(SlmkitError, match="f32, f16, bf16, q8_0, q4_0"):
        export_gguf(model, tiny_tok, tmp_path / "x.gguf", "q5_k")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SlmkitError, match="cannot create the folder"):
        export_gguf(model, tiny_tok, blocker / "x.gguf")
    with pytest.raises(SlmkitError, match="is a folder"):
        export_gguf(model, tiny_tok, tmp_path)
    with pytest.raises(SlmkitError, match="already exists"):
        export_gguf(model, tiny_tok, blocker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def _cli(argv: list[str]) -> int:
    """Parse as `slmkit` does (subcommands under dest "command") and run the export command."""
    from slmkit.cli import export

    parser = argparse.ArgumentParser(prog="slmkit")
    export.add_parser(parser.add_subparsers(dest="command", required=True))
    return export.run(parser.parse_args(argv))


@pytest.mark.filterwarnings("ignore:dropping added token")  # Qwen2Tokenizer's default unk token
def test_cli_export_gguf(tiny_dir, tmp_path, capsys):
    from slmkit.models import load

    out = tmp_path / "cli" / "model.gguf"
    assert _cli(["export", "gguf", str(tiny_dir("qwen2")), str(out), "--type", "q8_0"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model, tok = load(out, "float32")  # slmkit's own loader reads the file back
    assert model.config.model_type == "qwen2" and tok("hello")["input_ids"]
    with pytest.raises(SystemExit) as e:
        _cli(["export", "gguf", str(tiny_dir("qwen2")), str(out), "--type", "q5"])
    assert e.value.code == 2 and "invalid choice: 'q5'" in capsys.readouterr().err


def test_main_runs_export(tiny_dir, tmp_path, capsys):
    from slmkit.cli import main as cli_main

    if "export" not in cli_main.COMMANDS:
        pytest.skip("`export` is not wired into slmkit.cli.main yet")
    out = tmp_path / "m.gguf"
    assert cli_main.main(["export", "gguf", str(tiny_dir("llama")), str(out)]) == 0
    assert out.is_file()
    assert cli_main.main(["export", "gguf", str(tiny_dir("opt")), str(tmp_path / "o.gguf")]) == 1
    assert "does not support architecture 'opt'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama_cpp not installed")
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_llama_cpp_reads_the_file(model_type, tiny_tok, ids, tmp_path):
    import numpy as np
    from llama_cpp import Llama

    model = _model(model_type)
    path = export_gguf(model, tiny_tok, tmp_path / "m.gguf", "f16")
    llm = Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1)
    assert llm.tokenize(SAMPLE.encode(), add_bos=False, special=False) == ids[0].tolist()
    llm.eval(ids[0].tolist())
    got = torch.from_numpy(np.array(llm.scores[: ids.shape[1]], dtype=np.float32))
    assert _rel(got, _logits(model, ids)[0]) < F16_TOL * 3


@pytest.mark.slow
def test_default_model_exports_with_perplexity_kept(default_model, tmp_path):
    """The real SmolLM2: f16 and q8_0 files reload with window perplexity within 1% of the source."""
    import gguf

    from slmkit.data import TextData, embedded_text
    from slmkit.eval import PerplexityConfig, perplexity
    from slmkit.models import load

    model, tok = default_model
    data = TextData("eval[:3000]", [embedded_text("eval").docs[0][:3000]])
    cfg = PerplexityConfig(protocols=["window"], window=256)
    ppl = {"source": perplexity(model, tok, data, cfg)["window"]["token_perplexity"]}
    for kind in ("f16", "q8_0"):
        path = export_gguf(model, tok, tmp_path / f"smol-{kind}.gguf", kind)
        if kind == "f16":
            assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == "smollm"
            back, back_tok = load(path, "float32")
            assert back_tok(data.docs[0])["input_ids"] == tok(data.docs[0])["input_ids"]
        else:
            back = _reload(path)
        ppl[kind] = perplexity(back, tok, data, cfg)["window"]["token_perplexity"]
        del back
    print("window perplexity", ppl)
    for kind in ("f16", "q8_0"):
        assert abs(ppl[kind] / ppl["source"] - 1) < 0.01, ppl
