"""Every supported architecture: the adapter finds its parts, and it saves and reloads (with plain
`AutoModelForCausalLM.from_pretrained` and with slmkit's `load`) with identical logits."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmkit.models import ARCHS, get_arch, load, read_manifest, save
from slmkit.models.tiny import TINY_CONFIGS, tiny_model

ARCH_NAMES = sorted(ARCHS)


def test_every_adapter_has_a_tiny_config():
    assert set(ARCHS) == set(TINY_CONFIGS)
    for required in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "gpt2", "opt"):
        assert required in ARCHS


@pytest.mark.parametrize("model_type", ARCH_NAMES)
def test_adapter_finds_every_part(model_type):
    model = tiny_model(model_type)
    spec = get_arch(model)
    layers = spec.decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    hidden = model.config.hidden_size
    for layer in layers:
        lin = spec.linears(layer)
        assert {"o", "down"} <= set(lin)
        assert ("qkv" in lin) != ({"q", "k", "v"} <= set(lin))
        for role, module in lin.items():
            w = module.weight
            in_features = w.shape[0] if spec.conv1d else w.shape[1]
            if role in ("q", "k", "v", "qkv", "gate", "up", "gate_up"):
                assert in_features == hidden, (model_type, role)
        assert len(spec.layer_norms(layer)) == len(spec.norms)
        assert {spec.attn_in_norm, spec.mlp_in_norm} <= set(spec.norms)
    assert spec.embedding(model).weight.shape[0] == model.config.vocab_size
    assert spec.head(model) is model.get_output_embeddings()
    assert spec.norm(model) is not None


@pytest.mark.parametrize("model_type", ARCH_NAMES)
def test_save_reload_identical_logits(model_type, tiny_tok, tmp_path):
    model = tiny_model(model_type, seed=1)
    ids = torch.randint(3, 500, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    out = save(model, tiny_tok, tmp_path / "m", {"metrics": {"note": model_type}})
    manifest = read_manifest(out)
    assert manifest["model_type"] == model_type and manifest["metrics"] == {"note": model_type}
    assert not list(tmp_path.glob(".*partial*"))
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ours, tok = load(out, "float32")
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, ref)
        assert torch.equal(ours(ids).logits, ref)
    assert tok("def f(x): return x")["input_ids"] == tiny_tok("def f(x): return x")["input_ids"]
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
