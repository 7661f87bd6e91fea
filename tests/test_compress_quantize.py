"""quantize(model, cfg, calib) on every architecture: RTN and GPTQ (simulated: dequantized weights)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmkit.compress.api import quantize
from slmkit.compress.quantize.config import GPTQConfig, RTNConfig
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.models import ARCHS, get_arch, read_manifest, save
from slmkit.models.tiny import tiny_model

CALIB = torch.randint(3, 500, (8, 48), generator=torch.Generator().manual_seed(0))


def out_in(model, t):
    w = t.module.weight.data
    return w.T if get_arch(model).conv1d else w


@pytest.mark.parametrize("model_type", sorted(ARCHS))
@pytest.mark.parametrize("cfg", [RTNConfig(bits=3, group_size=16), GPTQConfig(bits=3, group_size=16, block_size=32)],
                         ids=["rtn", "gptq"])
def test_every_method_on_every_architecture_saves_and_reloads(model_type, cfg, tiny_tok, tmp_path):
    model = tiny_model(model_type, seed=2)
    quantize(model, cfg, CALIB)
    for t in all_targets(model):
        w = out_in(model, t)
        for g in range(0, w.shape[1], 16):  # each (row, group) holds at most 2^bits values
            block = w[:, g:g + 16]
            assert max(len(torch.unique(row)) for row in block) <= 2 ** 3, t.name
    ids = CALIB[:2]
    with torch.no_grad():
        ref = model(ids).logits
    out = save(model, tiny_tok, tmp_path / "q")
    assert read_manifest(out)["steps"][0]["quantize"] == type(cfg).__name__[:-6].lower()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, ref)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_gptq_keeps_outputs_closer_to_the_original_than_rtn(model_type):
    def mse_to_original(cfg):
        original = tiny_model(model_type, seed=5)
        model = tiny_model(model_type, seed=5)
        quantize(model, cfg, CALIB)
        with torch.no_grad():
            return (model(CALIB).logits - original(CALIB).logits).pow(2).mean().item()

    rtn_err = mse_to_original(RTNConfig(bits=3, group_size=32))
    gptq_err = mse_to_original(GPTQConfig(bits=3, group_size=32, block_size=32))
    assert gptq_err < rtn_err


def test_skip_list_and_errors():
    model = tiny_model("llama")
    before = {t.name: out_in(model, t).clone() for t in all_targets(model)}
    quantize(model, RTNConfig(bits=4, group_size=16, skip=["down"]), None)
    for t in all_targets(model):
        assert torch.equal(out_in(model, t), before[t.name]) == (t.role == "down")
    with pytest.raises(SlmkitError, match="already quantized"):
        quantize(model, RTNConfig(), None)
    with pytest.raises(SlmkitError, match="calibration"):
        quantize(tiny_model("llama"), GPTQConfig(), None)
    with pytest.raises(SlmkitError, match="bits"):
        quantize(tiny_model("llama"), RTNConfig(bits=12), None)
