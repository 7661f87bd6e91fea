"""Unstructured pruning: magnitude, Wanda, SparseGPT (uniform, N:M, OWL) — math against direct
checks, then prune(model, cfg, calib) on every tiny architecture, save and reload."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmkit.compress.api import prune, quantize
from slmkit.compress.prune.config import MagnitudeConfig, SparseGPTConfig, WandaConfig
from slmkit.compress.prune.magnitude import magnitude
from slmkit.compress.prune.nm import parse_nm, row_mask, split_count
from slmkit.compress.prune.owl import outlier_ratio, owl_sparsities
from slmkit.compress.prune.sparsegpt import sparsegpt
from slmkit.compress.prune.wanda import wanda
from slmkit.compress.quantize.config import RTNConfig
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.models import ARCHS, read_manifest, save
from slmkit.models.tiny import tiny_model

from layer_inputs import correlated_inputs, gen

CALIB = torch.randint(3, 500, (8, 48), generator=torch.Generator().manual_seed(0))
METHODS = {"magnitude": MagnitudeConfig, "wanda": WandaConfig, "sparsegpt": SparseGPTConfig}



def zeros_per_group(w, m):
    """Zeros in every group of m consecutive inputs of every row of w [out, in] -> [out, in/m]."""
    return (w == 0).reshape(w.shape[0], -1, m).sum(dim=2)



# ---- math ----------------------------------------------------------------------------------

def test_nm_parsing_and_exact_counts():
    assert parse_nm("2:4") == (2, 4) and parse_nm(" 4:8 ") == (4, 8) and parse_nm(None) is None
    for bad in ("2:2", "4:2", "0:4", "x:4", "2-4", "2:4:8", ""):
        with pytest.raises(SlmkitError, match="N:M"):
            parse_nm(bad)
    assert split_count([10] * 7, 0.3) == [3] * 7
    assert sum(split_count([10] * 7, 0.35)) == 25 and set(split_count([10] * 7, 0.35)) == {3, 4}
    mask = row_mask(torch.rand(7, 10, generator=gen()), 0.35)
    assert int(mask.sum()) == 25 and set(mask.sum(1).tolist()) == {3, 4}


def test_magnitude_prunes_the_smallest_weights_of_the_matrix():
    w = torch.randn(16, 32, generator=gen(1))
    p = magnitude(w, 0.5)
    kept, pruned = w[p != 0].abs(), w[p == 0].abs()
    assert int((p == 0).sum()) == 256 and kept.min() >= pruned.max()
    assert torch.equal(p[p != 0], w[p != 0])                          # no update of the others
    p24 = magnitude(w, 0.5, (2, 4))
    assert (zeros_per_group(p24, 4) == 2).all()
    groups = w.abs().reshape(16, 8, 4)
    kept_min = torch.where(p24.reshape(16, 8, 4) != 0, groups, torch.inf).amin(2)
    pruned_max = torch.where(p24.reshape(16, 8, 4) == 0, groups, -torch.inf).amax(2)
    assert (kept_min >= pruned_max).all()


def test_wanda_keeps_the_weights_with_large_input_norms():
    """First half of the inputs: large weights on quiet features; second half: small weights on
    loud features. Magnitude prunes the loud half; Wanda (|W| x ||X||) prunes the quiet half."""
    g = gen(2)
    signs = torch.randint(0, 2, (8, 16), generator=g) * 2 - 1
    w = signs * torch.cat([torch.full((8, 8), 2.0), torch.full((8, 8), 1.0)], dim=1)
    w = w * (1 + 0.01 * torch.rand(8, 16, generator=g))                # no ties
    norms = torch.cat([torch.full((8,), 0.1), torch.full((8,), 1.0)])
    quiet = torch.arange(16) < 8
    assert (wanda(w, norms, 0.5) == 0).eq(quiet[None, :]).all()       # every row: the quiet half
    assert (magnitude(w, 0.5) == 0).eq(~quiet[None, :]).all()
    # 2:4 with norms rising inside every group: the two quiet columns of each group go
    norms = torch.tensor([0.1, 0.2, 1.0, 2.0] * 4)
    w = torch.ones(8, 16)
    assert (wanda(w, norms, 0.5, (2, 4)) == 0).eq((norms < 0.5)[None, :]).all()


def test_sparsegpt_identities():
    w = torch.randn(12, 48, generator=gen(3))
    x = correlated_inputs(d=48)
    H = 2 * x.T @ x / x.shape[0]
    assert torch.equal(sparsegpt(w, H, 0.0, block_size=16), w)        # nothing pruned, no update
    # H = I: no correlation to compensate through, so SparseGPT = magnitude over the block
    assert torch.equal(sparsegpt(w, torch.eye(48), 0.5, block_size=48) == 0, magnitude(w, 0.5) == 0)
    # exact count with a block size that does not divide in_features and an odd sparsity
    p = sparsegpt(w, H, 0.37, block_size=20)
    assert int((p == 0).sum()) == round(0.37 * w.numel())
    p = sparsegpt(w, H, 0.5, (2, 4), block_size=16)
    assert (zeros_per_group(p, 4) >= 2).all()
    # N:M masks are chosen per M columns, so lazy blocks are only a schedule: same result
    one_block = sparsegpt(w, H, 0.5, (2, 4), block_size=48)
    assert torch.equal(p == 0, one_block == 0) and torch.allclose(p, one_block, atol=1e-4)
    with pytest.raises(SlmkitError, match="multiple of M"):
        sparsegpt(w, H, 0.5, (2, 4), block_size=6)


def test_sparsegpt_block_masks_need_not_give_every_row_its_share():
    w = torch.randn(12, 48, generator=gen(5))
    x = correlated_inputs(d=48)
    q = sparsegpt(w, 2 * x.T @ x / x.shape[0], 0.5, block_size=16)   # scope="block"
    assert not ((q == 0).sum(dim=1) == 24).all()                   # some row loses more (this seed)


def test_sparsegpt_row_global_masks():
    w = torch.randn(12, 48, generator=gen(5))
    w[:, :16] *= 3  # the first block's weights are costly to prune: rows should keep more there
    x = correlated_inputs(d=48)
    p = sparsegpt(w, 2 * x.T @ x / x.shape[0], 0.5, block_size=16, scope="row_global")
    per_block = (p == 0).reshape(12, 3, 16).sum(dim=2)             # [rows, blocks]
    assert (per_block.sum(1) == 24).all()                           # every row loses its share
    assert (per_block[:, 0] < 8).all()  # ... less than the equal share (8) in the costly block 0
    with pytest.raises(SlmkitError, match="scope"):
        sparsegpt(w, torch.eye(48), 0.5, scope="column")


@pytest.mark.parametrize("scope", ["block", "row_global"])
def test_sparsegpt_scopes_prune_an_uneven_count_exactly(scope):
    w = torch.randn(12, 48, generator=gen(5))
    x = correlated_inputs(d=48)
    p = sparsegpt(w, 2 * x.T @ x / x.shape[0], 0.37, block_size=20, scope=scope)
    assert int((p == 0).sum()) == round(0.37 * w.numel())


def test_sparsegpt_row_global_with_a_diagonal_hessian_is_wanda():
    # nothing to compensate through, and the cost w^2 (h_j + damp * mean h) ranks a row as Wanda
    # does with norms sqrt(h_j + damp * mean h): row_global masks equal Wanda's at any block size
    w = torch.randn(12, 48, generator=gen(5))
    h = torch.rand(48, generator=gen(6)) + 0.1
    ref = wanda(w, (h + 0.1 * h.mean()).sqrt(), 0.5)
    def pruned(scope, block):
        return sparsegpt(w, torch.diag(h), 0.5, block_size=block, damp=0.1, scope=scope)
    assert torch.equal(pruned("row_global", 48), ref)
    assert torch.equal(pruned("row_global", 16), ref)
    assert not torch.equal(pruned("block", 16), ref)


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
def test_layer_output_error_sparsegpt_below_wanda_below_magnitude(nm):
    x = correlated_inputs()
    w = torch.randn(64, 96, generator=gen(4))
    H = 2 * x.T @ x / x.shape[0]
    norms = x.pow(2).mean(0).sqrt()
    ref = x @ w.T

    def err(p):
        return ((x @ p.T - ref).pow(2).mean() / ref.pow(2).mean()).item()

    e_mag, e_wanda = err(magnitude(w, 0.5, nm)), err(wanda(w, norms, 0.5, nm))
    e_sgpt = err(sparsegpt(w, H, 0.5, nm, block_size=32))
    print(f"relative output error nm={nm}: magnitude {e_mag:.4f} wanda {e_wanda:.4f} "
          f"sparsegpt {e_sgpt:.4f}")
    assert e_sgpt < 0.8 * e_wanda and e_wanda < 0.8 * e_mag


def test_owl_math():
    s = owl_sparsities([0.01, 0.03, 0.02, 0.01], 0.5, 0.08)
    assert sum(s) / 4 == pytest.approx(0.5) and max(s) - min(s) == pytest.approx(0.16)
    assert s[1] == min(s) and s[0] == s[3] == max(s)                  # most outliers: least pruned
    assert owl_sparsities([0.02, 0.02], 0.6, 0.08) == [0.6, 0.6]
    with pytest.raises(SlmkitError, match="owl_lambda"):
        owl_sparsities([0.0, 1.0], 0.9, 0.2)
    metric = torch.ones(1000)
    metric[:10] = 100.0                                               # mean 1.99: 10 outliers at M=5
    assert outlier_ratio(metric, 5) == pytest.approx(0.01)


# ---- models --------------------------------------------------------------------------------

@pytest.mark.parametrize("nm", [None, "2:4"], ids=["unstructured", "2of4"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_every_method_on_every_architecture(model_type, method, nm, tiny_tok, tmp_path):
    model = tiny_model(model_type, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = METHODS[method](nm=nm, **({"block_size": 32} if method == "sparsegpt" else {}))
    report = prune(model, cfg, CALIB)
    targets = all_targets(model)
    assert set(report["targets"]) == {t.name for t in targets}
    for t in targets:
        w = t.weight()
        zeros = int((w == 0).sum())
        assert abs(zeros - 0.5 * w.numel()) <= 1, t.name              # exact per matrix
        assert report["targets"][t.name]["zeros"] == zeros
        if nm:
            assert (zeros_per_group(w, 4) >= 2).all(), t.name          # 2:4 in every group
        w0 = before[f"{t.name}.weight"]
        w0 = w0.T if t.conv1d else w0
        kept = w != 0
        if method == "sparsegpt":                                      # the kept weights moved
            assert not torch.equal(w[kept], w0[kept]), t.name
        else:                                                          # zeroed, nothing else
            assert torch.equal(w[kept], w0[kept]), t.name
    target_keys = {f"{t.name}.weight" for t in targets}
    for k, v in model.state_dict().items():                            # the rest untouched
        if k not in target_keys:
            assert torch.equal(v, before[k]), k
    total = report["total"]
    assert total["params"] == sum(t.weight().numel() for t in targets)
    assert abs(total["sparsity"] - 0.5) < 1e-3 and total["nonzero"] == total["params"] - total["zeros"]
    assert [r["target"] for r in report["layers"]] == [0.5, 0.5]
    assert report["nm"] == nm and report.get("nm_holds", True) is True
    assert model._slmkit_prune_report is report

    with torch.no_grad():
        ref = model(CALIB[:2]).logits
    out = save(model, tiny_tok, tmp_path / "p")
    step = read_manifest(out)["steps"][0]
    assert step["prune"] == method and step["config"] == vars(cfg)
    assert step["total"]["zeros"] == total["zeros"]
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    reloaded = dict(plain.named_modules())
    for t in targets:                                                  # zeros survive reload
        assert torch.equal(reloaded[t.name].weight, t.module.weight)
    with torch.no_grad():
        assert torch.equal(plain(CALIB[:2]).logits, ref)


def test_sparsegpt_keeps_the_model_closest_to_the_original():
    """On a random tiny model (no activation outliers, so Wanda ~ magnitude here) SparseGPT's
    reconstruction still shows: its logits stay closest to the dense model's."""
    def mse(cfg):
        original, model = tiny_model("llama", seed=5), tiny_model("llama", seed=5)
        prune(model, cfg, CALIB)
        with torch.no_grad():
            return (model(CALIB).logits - original(CALIB).logits).pow(2).mean().item()

    e_mag, e_wanda = mse(MagnitudeConfig()), mse(WandaConfig())
    e_sgpt = mse(SparseGPTConfig(block_size=32))
    print(f"logit MSE at 50%: magnitude {e_mag:.5f} wanda {e_wanda:.5f} sparsegpt {e_sgpt:.5f}")
    assert e_sgpt < 0.8 * min(e_mag, e_wanda)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_owl_gives_more_sparsity_to_layers_with_fewer_outliers(method):
    model = tiny_model("llama", seed=6, num_hidden_layers=4)
    layer = model.model.layers[2]
    with torch.no_grad():                                              # plant outliers in layer 2
        for lin in (layer.self_attn.q_proj, layer.mlp.up_proj):
            lin.weight[:, ::16] *= 30
    cfg = METHODS[method](sparsity=0.6, owl=True, owl_lambda=0.1)
    report = prune(model, cfg, CALIB)
    layers = report["layers"]
    asked = [r["target"] for r in layers]
    ratios = [r["outlier_ratio"] for r in layers]
    assert sum(asked) / 4 == pytest.approx(0.6) and max(asked) - min(asked) == pytest.approx(0.2)
    assert ratios[2] == max(ratios) and asked[2] == min(asked)
    order = sorted(range(4), key=lambda i: ratios[i])
    assert [asked[i] for i in order] == sorted(asked, reverse=True)    # fewer outliers, more pruned
    for t in all_targets(model):
        w = t.weight()
        assert abs(int((w == 0).sum()) - asked[t.layer] * w.numel()) <= 1, t.name
    assert report["total"]["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_skip_list_leaves_roles_dense():
    model = tiny_model("qwen2", seed=7)
    down = {t.name: t.weight().clone() for t in all_targets(model) if t.role == "down"}
    report = prune(model, WandaConfig(skip=["down"]), CALIB)
    assert not set(down) & set(report["targets"])
    for t in all_targets(model):
        if t.role == "down":
            assert torch.equal(t.weight(), down[t.name])


@pytest.mark.parametrize("cfg, calib, match", [
    (lambda: WandaConfig(sparsity=1.0), CALIB, r"\[0, 1\)"),
    (lambda: WandaConfig(sparsity=-0.1), CALIB, r"\[0, 1\)"),
    (lambda: MagnitudeConfig(sparsity="half"), None, r"\[0, 1\)"),
    (lambda: WandaConfig(nm="4:4"), CALIB, "N < M"),
    (lambda: SparseGPTConfig(nm="2-4"), CALIB, "'2:4'"),
    (lambda: WandaConfig(nm="2:4", sparsity=0.7), CALIB, "leave sparsity unset"),
    (lambda: WandaConfig(nm="2:4", owl=True), CALIB, "OWL"),
    (lambda: WandaConfig(), None, "calibration data"),
    (lambda: SparseGPTConfig(), None, "calibration data"),
    (lambda: MagnitudeConfig(owl=True), None, "calibration data"),
    (lambda: MagnitudeConfig(nm="2:6"), None, "divisible by 6"),
    (lambda: SparseGPTConfig(nm="2:4", block_size=30), CALIB, "multiple of M"),
    (lambda: SparseGPTConfig(damp=0), CALIB, "dampening"),
    (lambda: SparseGPTConfig(mask_scope="column"), CALIB, "mask_scope"),
    (lambda: WandaConfig(owl=True, owl_lambda=0.4, sparsity=0.8), CALIB, "owl_lambda"),
])
def test_errors(cfg, calib, match):
    """Refused when the config is made (bad values) or when pruning starts (model, data)."""
    with pytest.raises(SlmkitError, match=match):
        prune(tiny_model("llama"), cfg(), calib)


def test_matching_sparsity_with_nm_and_other_refusals():
    report = prune(tiny_model("llama"), MagnitudeConfig(nm="1:4", sparsity=0.75))
    assert report["total"]["sparsity"] == pytest.approx(0.75) and report["nm_holds"]
    with pytest.raises(SlmkitError, match="quantized"):
        prune(quantize(tiny_model("llama"), RTNConfig(bits=4, group_size=32)), MagnitudeConfig())
    model = tiny_model("llama")
    model.config.model_type = "mamba"
    with pytest.raises(SlmkitError, match="mamba"):
        prune(model, MagnitudeConfig())
    with pytest.raises(SlmkitError, match="pruning method"):
        prune(tiny_model("llama"), RTNConfig())
