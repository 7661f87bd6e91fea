"""Structured pruning (depth: whole layers; width: MLP channels and KV head groups).

The central check: the pruned model, saved and reloaded with plain `from_pretrained`, gives the
same logits as the DENSE model with the same units masked (a removed layer = identity; a removed
head = its slice of o's input zeroed; a removed channel = that column of down's input zeroed)."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmkit.compress.prune.depth import prune_depth
from slmkit.compress.prune.structured import (
    DepthPruneConfig,
    WidthPruneConfig,
    count_params,
    parse_target,
)
from slmkit.compress.prune.width import prune_width
from slmkit.errors import SlmkitError
from slmkit.models import ARCHS, get_arch, read_manifest, save
from slmkit.models.tiny import tiny_model

ARCH_NAMES = sorted(ARCHS)
HEAD_PRUNABLE = [t for t in ARCH_NAMES if ARCHS[t].head_dim_attr is not None]


def ids(n=4, length=24, seed=0):
    return torch.randint(3, 500, (n, length), generator=torch.Generator().manual_seed(seed))


def deep_model(model_type, seed=0):
    """A 4-layer tiny model; with mixed sliding/full layers where the architecture has them, and
    windows (8) shorter than the test sequences (24), so cutting `layer_types` wrongly shows."""
    spec = ARCHS[model_type]
    extra = {spec.n_layers_attr: 4}
    if model_type == "gemma3_text":
        extra.update(sliding_window=8, layer_types=["sliding_attention", "full_attention",
                                                    "full_attention", "sliding_attention"])
    if model_type in ("qwen2", "qwen3"):
        extra.update(use_sliding_window=True, sliding_window=8, max_window_layers=2)
    return tiny_model(model_type, seed=seed, **extra)


def skipped(model, indices):
    """Reference: the dense model with layers `indices` replaced by the identity."""
    def identity(module, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]
        return (x, *out[1:]) if isinstance(out, tuple) else x
    layers = get_arch(model).decoder_layers(model)
    return [layers[i].register_forward_hook(identity, with_kwargs=True) for i in indices]


def masked(model, report):
    """Reference: the dense model with the report's heads and channels zeroed at o's / down's input."""
    spec = get_arch(model)
    heads = getattr(model.config, spec.heads_attr)
    handles = []
    for layer, entry in zip(spec.decoder_layers(model), report["layers"]):
        lin = spec.linears(layer)

        def zero_heads(module, args, removed=entry["removed_heads"]):
            x = args[0].clone()
            x = x.view(*x.shape[:-1], heads, -1)  # [b, L, heads, hd]
            x[..., removed, :] = 0
            return (x.flatten(-2),)

        def zero_channels(module, args, removed=entry["removed_channels"]):
            x = args[0].clone()
            x[..., removed] = 0
            return (x,)
        handles.append(lin["o"].register_forward_pre_hook(zero_heads))
        handles.append(lin["down"].register_forward_pre_hook(zero_channels))
    return handles


def reload(model, tok, path):
    out = save(model, tok, path)
    return out, AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def assert_cache_consistent(model, x):
    """Greedy decoding with the KV cache equals decoding without (layer indices renumbered right)."""
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(model.generate(x, use_cache=True, **kw), model.generate(x, use_cache=False, **kw))


# ---- depth -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ARCH_NAMES)
def test_depth_pruned_equals_dense_with_layers_skipped(model_type, tiny_tok, tmp_path):
    model = deep_model(model_type)
    spec = get_arch(model)
    dense = copy.deepcopy(model)
    layer_types = getattr(model.config, "layer_types", None)
    report = prune_depth(model, DepthPruneConfig(target=0.3, batch_size=2), ids())
    removed = report["removed_layers"]
    kept = [i for i in range(4) if i not in removed]
    assert 1 <= len(removed) < 4 and report["params_after"] < report["params_before"]
    assert report["params_after"] <= report["params_before"] * 0.7
    out, plain = reload(model, tiny_tok, tmp_path / "m")
    assert getattr(plain.config, spec.n_layers_attr) == len(kept) == len(spec.decoder_layers(plain))
    if layer_types is not None:
        assert plain.config.layer_types == [layer_types[i] for i in kept]
    assert count_params(plain) == report["params_after"]
    assert sum(e["params"] for e in report["layers"] if not e["removed"]) \
        == sum(count_params(layer) for layer in spec.decoder_layers(plain))
    assert read_manifest(out)["steps"][-1]["prune"] == "depth"
    x = ids(2, 24, seed=1)
    skipped(dense, removed)
    ref = logits(dense, x)
    for pruned in (model, plain):  # in memory (e.g. to quantize next) and reloaded
        torch.testing.assert_close(logits(pruned, x), ref, rtol=1e-5, atol=1e-5)
        assert_cache_consistent(pruned, x[:1, :12])


def test_block_influence_removes_the_identity_layer():
    model = tiny_model("llama", num_hidden_layers=4)
    spec = get_arch(model)
    lin = spec.linears(spec.decoder_layers(model)[2])
    with torch.no_grad():  # no attention or MLP output: layer 2 is exactly the identity
        lin["o"].weight.zero_()
        lin["down"].weight.zero_()
    one_layer = count_params(spec.decoder_layers(model)[0])
    report = prune_depth(model, DepthPruneConfig(target=str(count_params(model) - one_layer)), ids())
    scores = [e["score"] for e in report["layers"]]
    assert report["removed_layers"] == [2]
    assert abs(scores[2]) < 1e-6 and min(s for i, s in enumerate(scores) if i != 2) > 1e-3
    assert model.config.num_hidden_layers == 3


def test_ppl_ranking_is_the_loss_with_each_layer_skipped():
    import torch.nn.functional as F

    model = tiny_model("llama", seed=3, num_hidden_layers=4)
    dense, calib = copy.deepcopy(model), ids()

    def loss(m):
        lg = logits(m, calib)[:, :-1]
        return F.cross_entropy(lg.flatten(0, 1), calib[:, 1:].flatten()).item()

    base = loss(dense)
    expected = []
    for i in range(4):
        handles = skipped(dense, [i])
        expected.append(loss(dense) - base)
        for h in handles:
            h.remove()
    one_layer = count_params(get_arch(model).decoder_layers(model)[0])
    report = prune_depth(model, DepthPruneConfig(target=count_params(model) - one_layer, ranking="ppl"), calib)
    assert [e["score"] for e in report["layers"]] == pytest.approx(expected, abs=1e-5)
    assert report["removed_layers"] == [min(range(4), key=expected.__getitem__)]


# ---- width -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ARCH_NAMES)
def test_width_pruned_equals_dense_with_units_masked(model_type, tiny_tok, tmp_path):
    model = tiny_model(model_type, seed=2)
    spec = get_arch(model)
    dense = copy.deepcopy(model)
    down = spec.linears(spec.decoder_layers(dense)[0])["down"].weight
    width = down.shape[0 if spec.conv1d else 1]  # MLP channels before pruning
    report = prune_width(model, WidthPruneConfig(target=0.2, batch_size=2), ids())
    assert report["removed_channels_per_layer"] >= 1
    if model_type in HEAD_PRUNABLE:  # the tiny split takes one of the two KV groups
        assert report["removed_kv_groups_per_layer"] == 1
    assert report["params_after"] <= report["params_before"] * 0.8
    out, plain = reload(model, tiny_tok, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    for name, value in report["config"].items():
        assert config[name] == value
    assert count_params(plain) == report["params_after"]
    for layer, entry in zip(spec.decoder_layers(plain), report["layers"]):
        assert count_params(layer) == entry["params_after"] < entry["params_before"]
        lin = spec.linears(layer)
        channels = width - report["removed_channels_per_layer"]
        o_in = lin["o"].weight.shape[0 if spec.conv1d else 1]
        assert lin["down"].weight.shape[0 if spec.conv1d else 1] == channels
        assert o_in == 16 * (4 - report["removed_heads_per_layer"])
    x = ids(2, 24, seed=1)
    masked(dense, report)
    ref = logits(dense, x)
    for pruned in (model, plain):
        torch.testing.assert_close(logits(pruned, x), ref, rtol=1e-5, atol=1e-5)
        assert_cache_consistent(pruned, x[:1, :12])


@pytest.mark.parametrize("prune", ["mlp", "heads"])
def test_width_prunes_only_what_is_asked(prune):
    model = tiny_model("qwen2")
    report = prune_width(model, WidthPruneConfig(target=0.05, prune=prune), ids())
    c = model.config
    if prune == "mlp":
        assert report["removed_kv_groups_per_layer"] == 0 and c.num_attention_heads == 4
        assert c.intermediate_size < 128
    else:
        assert report["removed_channels_per_layer"] == 0 and c.intermediate_size == 128
        assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (2, 1, 16)


def test_width_removes_the_units_that_contribute_nothing():
    model = tiny_model("llama", seed=4)
    spec = get_arch(model)
    for layer in spec.decoder_layers(model):
        lin = spec.linears(layer)
        with torch.no_grad():
            lin["down"].weight[:, :60] = 0  # channels 0-59 write nothing
            lin["o"].weight[:, 32:] = 0     # heads 2, 3 (KV group 1) write nothing
    report = prune_width(model, WidthPruneConfig(target=0.2, align=1), ids())
    assert report["removed_kv_groups_per_layer"] == 1 and report["removed_channels_per_layer"] <= 60
    for entry in report["layers"]:
        assert entry["removed_kv_groups"] == [1] and entry["removed_heads"] == [2, 3]
        assert set(entry["removed_channels"]) <= set(range(60))


# ---- targets and errors ----------------------------------------------------------------------
def test_parse_target():
    n = 2_000_000_000
    assert parse_target(0.25, n) == 500_000_000
    assert parse_target("25%", n) == parse_target("0.25", n) == 500_000_000
    assert parse_target("1.2B", n) == 800_000_000
    assert parse_target("100M", n) == 1_900_000_000
    assert parse_target("500k", 1_000_000) == 500_000
    assert parse_target(1_500_000_000, n) == 500_000_000
    model = tiny_model("llama")
    assert parse_target(0.5, model) == round(count_params(model) / 2)
    for bad in (0, 0.0, "100%", "150%", "0%", "abc", "-3M", True, 2.5, None):
        with pytest.raises(SlmkitError):
            parse_target(bad, n)
    with pytest.raises(SlmkitError, match="not smaller"):
        parse_target("3B", n)


def test_targets_that_leave_no_layer_head_or_channel_are_errors():
    model = tiny_model("llama")
    before = count_params(model)
    with pytest.raises(SlmkitError, match="every decoder layer"):
        prune_depth(model, DepthPruneConfig(target=0.6), ids())
    with pytest.raises(SlmkitError, match="fewer than one"):
        prune_width(model, WidthPruneConfig(target=0.7), ids())
    with pytest.raises(SlmkitError, match="fewer than one"):
        prune_width(model, WidthPruneConfig(target=0.3, prune="heads"), ids())
    with pytest.raises(SlmkitError, match="prune='mlp'"):
        prune_width(tiny_model("gpt2"), WidthPruneConfig(target=0.1, prune="heads"), ids())
    with pytest.raises(SlmkitError, match="calibration"):
        prune_depth(model, DepthPruneConfig(), None)
    assert count_params(model) == before and model.config.num_hidden_layers == 2


def test_a_config_that_would_not_reload_is_an_error():
    """phi3's longrope factors are sized by hidden_size / heads: fewer heads would not load."""
    rope = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
            "long_factor": [1.0] * 8, "original_max_position_embeddings": 64}
    model = tiny_model("phi3", rope_parameters=rope, original_max_position_embeddings=64)
    with pytest.raises(SlmkitError, match="would not load.*prune='mlp'"):
        prune_width(model, WidthPruneConfig(target=0.05, prune="heads"), ids())
    assert model.config.num_attention_heads == 4
    report = prune_width(model, WidthPruneConfig(target=0.05, prune="mlp"), ids())
    assert report["params_after"] < report["params_before"]


def test_unknown_architecture_is_an_error():
    from transformers import GPTNeoXConfig

    config = GPTNeoXConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128)
    model = AutoModelForCausalLM.from_config(config)
    for fn, cfg in ((prune_depth, DepthPruneConfig()), (prune_width, WidthPruneConfig())):
        with pytest.raises(SlmkitError, match="adapter table"):
            fn(model, cfg, ids())


@pytest.mark.parametrize("align", [1, 16, 32])
def test_width_keeps_a_multiple_of_align_mlp_channels(align):
    """A kernel-friendly width: the kept channel count is a multiple of `align`, reached by
    removing more (never fewer) channels than the target needs."""
    model = tiny_model("llama", seed=3)
    spec = get_arch(model)
    width = spec.linears(spec.decoder_layers(model)[0])["down"].weight.shape[1]
    exact = prune_width(copy.deepcopy(model), WidthPruneConfig(target=0.11, prune="mlp", align=1), ids())
    report = prune_width(model, WidthPruneConfig(target=0.11, prune="mlp", align=align), ids())
    kept = width - report["removed_channels_per_layer"]
    assert kept % align == 0 and kept > 0
    assert 0 <= report["removed_channels_per_layer"] - exact["removed_channels_per_layer"] < align
    assert spec.linears(spec.decoder_layers(model)[0])["down"].weight.shape[1] == kept
    with pytest.raises(SlmkitError, match="align must be a positive integer"):
        prune_width(tiny_model("llama"), WidthPruneConfig(target=0.1, align=0), ids())
