"""Low-rank factorization: SVD/ASVD math against direct references, and factorized models that
save, reload (slmkit.models.load) and merge back to a plain from_pretrained checkpoint."""

import pytest
import torch
from layer_inputs import correlated_inputs, gen
from transformers import AutoModelForCausalLM

from slmkit.compress import ASVDConfig, SVDConfig, lowrank, merge_lowrank
from slmkit.compress.lowrank.svd import rank_for, svd_factors
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.models import load, read_manifest, save
from slmkit.models.tiny import tiny_model
from slmkit.runtime.lowrank import LowRankLinear

CALIB = torch.randint(3, 500, (8, 48), generator=torch.Generator().manual_seed(0))


def test_svd_is_the_best_rank_r_approximation():
    w = torch.randn(40, 24, generator=gen(1))
    B, A = svd_factors(w, 24)
    assert torch.allclose(B @ A, w, atol=1e-5)                    # full rank: exact
    S = torch.linalg.svdvals(w)
    B, A = svd_factors(w, 6)
    assert torch.allclose(torch.linalg.norm(w - B @ A), S[6:].norm(), rtol=1e-4)  # Eckart-Young
    assert rank_for(100, 100, 0.8) == 40 and rank_for(10, 1000, 0.5) == 4


def test_asvd_keeps_the_output_closer_where_the_inputs_are():
    x = correlated_inputs()                 # a few outlier channels, like real activations
    w = torch.randn(64, 96, generator=gen(2))
    scale = x.abs().mean(0) ** 0.5
    plain, aware = svd_factors(w, 16), svd_factors(w, 16, scale)
    err = {k: (x @ (w - B @ A).T).pow(2).mean() for k, (B, A) in {"svd": plain, "asvd": aware}.items()}
    assert err["asvd"] < 0.9 * err["svd"]


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text", "mistral"])
@pytest.mark.parametrize("cfg", [SVDConfig(keep=0.5), ASVDConfig(keep=0.5)], ids=["svd", "asvd"])
def test_factorized_model_saves_reloads_and_merges(model_type, cfg, tiny_tok, tmp_path):
    model = tiny_model(model_type, seed=3)
    linear_params = sum(t.module.weight.numel() for t in all_targets(model))
    report = lowrank(model, cfg, CALIB)
    assert report["layers"] and all(isinstance(model.get_submodule(r["name"]), LowRankLinear)
                                    for r in report["layers"])
    removed = report["params_before"] - report["params_after"]
    assert 0.4 * linear_params < removed <= 0.5 * linear_params + 1000  # ~half of every factorized layer
    with torch.no_grad():
        ref = model(CALIB[:2]).logits
    out = save(model, tiny_tok, tmp_path / "lr")
    assert read_manifest(out)["lowrank"] == report["layers"]
    reloaded, _ = load(out, dtype="float32")
    assert reloaded.num_parameters() == report["params_after"]
    with torch.no_grad():
        assert torch.equal(reloaded(CALIB[:2]).logits, ref)
    merge_lowrank(reloaded)
    dense_out = save(reloaded, tiny_tok, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(dense_out, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(plain(CALIB[:2]).logits, ref, atol=1e-4, rtol=1e-4)


def test_bad_settings_are_refused():
    with pytest.raises(SlmkitError, match="keep"):
        SVDConfig(keep=1.0)
    with pytest.raises(SlmkitError, match="calibration"):
        lowrank(tiny_model("llama"), ASVDConfig())
    with pytest.raises(SlmkitError, match="Conv1D"):
        lowrank(tiny_model("gpt2"), SVDConfig())
    with pytest.raises(SlmkitError, match="no linear layers"):
        lowrank(tiny_model("llama"), SVDConfig(skip=["*"]))
