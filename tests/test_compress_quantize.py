"""quantize(model, cfg, calib) on every architecture: RTN and GPTQ (simulated: dequantized weights)."""

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmkit.compress.api import quantize
from slmkit.compress.quantize.awq import AWQConfig
from slmkit.compress.quantize.config import GPTQConfig, RTNConfig
from slmkit.compress.quantize.smoothquant import SmoothQuantConfig
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.models import ARCHS, get_arch, load, read_manifest, save
from slmkit.models.tiny import tiny_model
from slmkit.runtime.kernels import Int4Linear, Int8Linear, W8A8Linear

CALIB = torch.randint(3, 500, (8, 48), generator=torch.Generator().manual_seed(0))


def out_in(model, t):
    w = t.module.weight.data
    return w.T if get_arch(model).conv1d else w


@pytest.mark.parametrize("model_type", sorted(ARCHS))
@pytest.mark.parametrize("cfg", [RTNConfig(bits=3, group_size=32),
                                 GPTQConfig(bits=4, group_size=32, block_size=32),
                                 AWQConfig(bits=4, group_size=32, n_grid=4),
                                 SmoothQuantConfig()],
                         ids=["rtn", "gptq", "awq", "smoothquant"])
def test_every_method_on_every_architecture_saves_and_reloads(model_type, cfg, tiny_tok, tmp_path):
    model = tiny_model(model_type, seed=2)
    targets = [t.name for t in all_targets(model)]
    quantize(model, cfg, CALIB)
    modules = dict(model.named_modules())
    kernel = W8A8Linear if isinstance(cfg, SmoothQuantConfig) else Int4Linear
    for name in targets:
        lin = modules[name]
        assert type(lin) is kernel, name                 # packed, on the integer kernel
        assert int(lin.codes().max()) < 2 ** lin.bits
    ids = CALIB[:2]
    with torch.no_grad():
        ref = model(ids).logits
    out = save(model, tiny_tok, tmp_path / "q")
    assert read_manifest(out)["steps"][0]["config"] == vars(cfg)
    reloaded, _ = load(out, dtype="float32")
    assert type(dict(reloaded.named_modules())[targets[0]]) is kernel
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, ref)


@pytest.mark.parametrize("model_type", sorted(set(ARCHS) - {"gpt2"}))
def test_checkpoint_loads_in_transformers_with_compressed_tensors(model_type, tiny_tok, tmp_path):
    """The interop check: transformers + compressed-tensors read our checkpoint and compute what
    the quantized weights define (exactly: they dequantize to float); slmkit's int4 kernel gives
    the same within its bf16 tolerance. (gpt2's Conv1D stores weights transposed, so a
    compressed-tensors reader would quantize the other axis: gpt2 reloads with slmkit.load.)"""
    pytest.importorskip("compressed_tensors")
    cfg = RTNConfig(bits=4, group_size=32, symmetric=True)
    simulated = quantize(tiny_model(model_type, seed=3), cfg, pack_weights=False)
    model = quantize(tiny_model(model_type, seed=3), cfg)
    with torch.no_grad():
        exact, ours = simulated(CALIB[:2]).logits, model(CALIB[:2]).logits
    out = save(model, tiny_tok, tmp_path / "q")
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        got = theirs(CALIB[:2]).logits
    assert torch.allclose(got, exact, atol=1e-4, rtol=1e-4)
    assert (ours - exact).abs().max() < 0.02 * exact.abs().max()


def test_packed_checkpoint_is_a_quarter_of_bf16(tiny_tok, tmp_path):
    """4-bit codes take 1/4 of bf16's bytes; scales add 4 bytes per group of 32 (1/16 more)."""
    from safetensors import safe_open

    model = tiny_model("llama", seed=1, hidden_size=256, intermediate_size=512)
    dense = sum(t.module.weight.numel() for t in all_targets(model)) * 2    # bf16 bytes
    quantize(model, RTNConfig(bits=4, group_size=32, symmetric=True))
    out = save(model, tiny_tok, tmp_path / "q")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        packed = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()
                     if k.endswith(("weight_packed", "weight_scale", "weight_shape")))
    assert packed / dense < 0.25 + 2 / 32 + 0.01


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_gptq_keeps_outputs_closer_to_the_original_than_rtn(model_type):
    def mse_to_original(cfg):
        original = tiny_model(model_type, seed=5)
        model = tiny_model(model_type, seed=5)
        quantize(model, cfg, CALIB, pack_weights=False)
        with torch.no_grad():
            return (model(CALIB).logits - original(CALIB).logits).pow(2).mean().item()

    rtn_err = mse_to_original(RTNConfig(bits=3, group_size=32))
    gptq_err = mse_to_original(GPTQConfig(bits=3, group_size=32, block_size=32))
    assert gptq_err < rtn_err


def test_skip_list_and_errors():
    model = tiny_model("llama")
    before = {t.name: out_in(model, t).clone() for t in all_targets(model)}
    quantize(model, RTNConfig(bits=4, group_size=16, skip=["down"]), None, pack_weights=False)
    for t in all_targets(model):
        assert torch.equal(out_in(model, t), before[t.name]) == (t.role == "down")
    with pytest.raises(SlmkitError, match="simulated"):
        save(model, None, "/tmp/never-written")
    with pytest.raises(SlmkitError, match="already quantized"):
        quantize(model, RTNConfig(), None)
    with pytest.raises(SlmkitError, match="calibration"):
        quantize(tiny_model("llama"), GPTQConfig(), None)
    with pytest.raises(SlmkitError, match="bits"):
        quantize(tiny_model("llama"), RTNConfig(bits=12), None)


def test_act_order_without_static_groups_is_refused_before_any_work():
    with pytest.raises(SlmkitError, match="static_groups=True"):
        quantize(tiny_model("llama"), GPTQConfig(act_order=True, static_groups=False), CALIB)


def test_per_module_overrides_mix_kernels_and_survive_save(tiny_tok, tmp_path):
    model = tiny_model("qwen2", seed=4)
    cfg = GPTQConfig(bits=4, group_size=32, symmetric=True, block_size=32,
                     overrides={"down": {"bits": 8, "group_size": None}})
    quantize(model, cfg, CALIB)
    kinds = {t.role: type(dict(model.named_modules())[t.name]).__name__ for t in all_targets(model)}
    assert kinds["down"] == "Int8Linear" and kinds["q"] == kinds["up"] == "Int4Linear"
    with torch.no_grad():
        ref = model(CALIB[:2]).logits
    out = save(model, tiny_tok, tmp_path / "q")
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == [4, 8]
    reloaded, _ = load(out, dtype="float32")
    with torch.no_grad():
        assert torch.equal(reloaded(CALIB[:2]).logits, ref)
    if importlib.util.find_spec("compressed_tensors"):  # int4 kernel runs in bf16: 2% tolerance
        theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        with torch.no_grad():
            assert (theirs(CALIB[:2]).logits - ref).abs().max() < 0.02 * ref.abs().max()


@pytest.mark.parametrize("overrides,match", [({"down": {"bitz": 8}}, "unknown setting"),
                                              ({"down": {"bits": 9}}, "bits"),
                                              ({"down": {}}, "non-empty")])
def test_bad_overrides_are_refused(overrides, match):
    with pytest.raises(SlmkitError, match=match):
        quantize(tiny_model("llama"), RTNConfig(overrides=overrides))


def test_w8a8_checkpoint_loads_in_transformers_with_compressed_tensors(tiny_tok, tmp_path):
    """transformers runs our W8A8 checkpoint as W8A8 too: both sit off the float-activation
    result of the same int8 weights by per-token activation rounding of the same size (the
    two round activations slightly differently, so they do not coincide)."""
    pytest.importorskip("compressed_tensors")
    cfg = SmoothQuantConfig()
    weight_only = quantize(tiny_model("llama", seed=6), cfg, CALIB, pack_weights=False)
    model = quantize(tiny_model("llama", seed=6), cfg, CALIB)
    out = save(model, tiny_tok, tmp_path / "q")
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        ours, got, wo = (m(CALIB[:2]).logits for m in (model, theirs, weight_only))

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert 1e-3 < rel(ours, wo) < 0.05                       # activations are rounded ...
    assert 0.5 < rel(got, wo) / rel(ours, wo) < 2            # ... by the same amount in both
    assert rel(got, ours) < 2 * rel(ours, wo)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text"])
def test_head_bits_unties_and_quantizes_the_output_head(model_type, tiny_tok, tmp_path):
    model = tiny_model(model_type, seed=4, tie_word_embeddings=True)
    emb = model.get_input_embeddings().weight.detach().clone()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    quantize(model, RTNConfig(bits=4, group_size=32, symmetric=True, head_bits=8))
    head = model.get_output_embeddings()
    assert type(head) is Int8Linear and head.bits == 8 and head.group_size is None
    assert torch.equal(model.get_input_embeddings().weight, emb)   # the embeddings are untouched
    assert not model.config.tie_word_embeddings
    assert (head.dense_weight() - emb).abs().max() <= head.scale.max() / 2 + 1e-6  # half a step
    with torch.no_grad():
        ref = model(CALIB[:2]).logits
    out = save(model, tiny_tok, tmp_path / "q")
    reloaded, _ = load(out, dtype="float32")
    assert type(reloaded.get_output_embeddings()) is Int8Linear
    with torch.no_grad():
        assert torch.equal(reloaded(CALIB[:2]).logits, ref)
    if importlib.util.find_spec("compressed_tensors"):
        theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        with torch.no_grad():
            assert torch.allclose(theirs(CALIB[:2]).logits, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kw, match", [(dict(damp=0.0), "damp"), (dict(damp=1.5), "damp"),
                                       (dict(clip_floor=-0.5), "clip_floor")])
def test_gptq_settings_out_of_range_are_refused_when_the_config_is_made(kw, match):
    with pytest.raises(SlmkitError, match=match):
        GPTQConfig(**kw)


def test_head_bits_out_of_range_is_refused():
    with pytest.raises(SlmkitError, match="head_bits must be 5-8"):
        quantize(tiny_model("llama"), RTNConfig(head_bits=4))


@pytest.mark.parametrize("model_type,bits", [("llama", 4), ("qwen2", 8), ("gemma3_text", 4)])
def test_embed_bits_quantizes_the_table_and_reloads_everywhere(model_type, bits, tiny_tok, tmp_path):
    from slmkit.runtime.embedding import QuantEmbedding
    from slmkit.runtime.modules import dequantize

    model = tiny_model(model_type, seed=5, tie_word_embeddings=True)
    emb = model.get_input_embeddings()
    table, cls, scale = emb.weight.detach().clone(), type(emb), getattr(emb, "embed_scale", None)
    quantize(model, RTNConfig(bits=4, group_size=32, embed_bits=bits, head_bits=8))
    q = model.get_input_embeddings()
    assert type(q) is QuantEmbedding and q.bits == bits and not model.config.tie_word_embeddings
    assert q.group_size == (None if bits == 8 else 32)
    err = (q.dense_weight() - table).abs()
    assert 0 < err.max() <= q.scale.max() / 2 + 1e-6                 # half a step, not exact
    ids = CALIB[:2]
    looked_up = table[ids] * (1 if scale is None else scale)
    assert torch.allclose(q(ids), q.dense_weight()[ids] * (1 if scale is None else scale))
    assert not torch.equal(q(ids), looked_up)
    with torch.no_grad():
        ref = model(ids).logits
    out = save(model, tiny_tok, tmp_path / "q")
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    reloaded, _ = load(out, dtype="float32")
    assert type(reloaded.get_input_embeddings()) is QuantEmbedding
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, ref)
    # (transformers 5.23 cannot build a compressed nn.Embedding: its weight initialisation reads
    # `embed_tokens.weight`, which compressed-tensors has replaced; slmkit.models.load is the way)
    dequantize(reloaded)
    dense = reloaded.get_input_embeddings()
    assert type(dense) is cls and torch.equal(dense.weight, q.dense_weight())
    # the table on disk is codes, not floats: ~bits/16 of its bf16 bytes
    plain = tiny_model(model_type, seed=5, tie_word_embeddings=False)
    quantize(plain, RTNConfig(bits=4, group_size=32, head_bits=8))
    size_float_table = sum(f.stat().st_size for f in save(plain, tiny_tok, tmp_path / "p").glob("*.safetensors"))
    table_bytes = table.numel() * 4   # tiny models save float32
    assert size_float_table - size > table_bytes * (1 - bits / 32 - 0.15)


def test_embed_bits_other_than_4_or_8_is_refused():
    with pytest.raises(SlmkitError, match="embed_bits must be one of"):
        RTNConfig(embed_bits=6)


def test_param_count_counts_quantized_weights():
    from slmkit.eval.memory import param_count

    model = tiny_model("qwen2", seed=1)
    before = param_count(model)
    quantize(model, RTNConfig(bits=4, group_size=32))
    assert sum(p.numel() for p in model.parameters()) < before   # codes are not Parameters ...
    assert param_count(model) == before                          # ... but are still parameters


@pytest.mark.parametrize("head_bits", [8, None], ids=["int8-head", "dense-head"])
def test_auto_decode_dtype_of_a_reloaded_quantized_model(head_bits, tiny_tok, tmp_path):
    """load(folder, "auto", phase="decode") looks at the loaded model: float32 on AVX2 when the
    integer weights dominate what a step reads, bf16 when a large dense head remains."""
    from slmkit.models.dtype import integer_bound
    from slmkit.runtime.cpu import has_native_bf16

    model = tiny_model("llama", seed=4)
    quantize(model, RTNConfig(bits=4, group_size=32, head_bits=head_bits))
    out = save(model, tiny_tok, tmp_path / "q")
    reloaded, _ = load(out, dtype="auto", phase="decode")
    assert integer_bound(reloaded) is (head_bits == 8)
    norm = reloaded.model.norm.weight.dtype
    want = torch.bfloat16 if has_native_bf16() or head_bits is None else torch.float32
    assert norm is want
    with torch.no_grad():
        logits = reloaded(CALIB[:1]).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("bits, group_size", [(3, 32), (4, 32), (8, None)])  # int4 and int8 kernels
def test_unpacked_int8_zero_points_load_like_packed_ones(bits, group_size, tiny_tok, tmp_path):
    """Older compressed-tensors checkpoints store asymmetric zero points unpacked, as int8
    [out, groups] holding zero - 2^(bits-1) (the signed convention of the codes). Rewriting our
    packed int32 zero points that way must load to the same grids and the same logits."""
    from safetensors.torch import load_file, save_file

    from slmkit.runtime.checkpoint import quantized_modules
    from slmkit.runtime.pack import unpack_int32

    model = quantize(tiny_model("llama", seed=6), RTNConfig(bits=bits, group_size=group_size, symmetric=False))
    with torch.no_grad():
        ref = model(CALIB[:2]).logits
    packed_dir = save(model, tiny_tok, tmp_path / "packed")
    tensors = load_file(str(packed_dir / "model.safetensors"))
    signed_dir = save(model, tiny_tok, tmp_path / "int8")
    rewritten = 0
    for key in [k for k in tensors if k.endswith(".weight_zero_point")]:
        name = key.removesuffix(".weight_zero_point")
        out_features = int(tensors[f"{name}.weight_shape"][0])
        zero = unpack_int32(tensors[key], bits, out_features, dim=0).to(torch.int16)   # [out, groups]
        tensors[key] = (zero - 2 ** (bits - 1)).to(torch.int8)
        rewritten += 1
    assert rewritten > 0
    signed = torch.cat([t.flatten() for k, t in tensors.items() if k.endswith(".weight_zero_point")])
    assert signed.dtype == torch.int8 and int(signed.min()) < 0 < int(signed.max())
    save_file(tensors, str(signed_dir / "model.safetensors"), metadata={"format": "pt"})

    reloaded, _ = load(signed_dir, dtype="float32")
    from_packed, _ = load(packed_dir, dtype="float32")
    mods, want = quantized_modules(reloaded), quantized_modules(from_packed)
    assert mods.keys() == want.keys() and mods
    with torch.no_grad():
        got = reloaded(CALIB[:2]).logits
    off = float((got - ref).abs().max())
    assert off == 0, f"logits differ from the saved model's by up to {off:.3g}"
    for name, m in mods.items():
        off = float((m.zero - want[name].zero).abs().max())
        assert off == 0, f"{name}: zero points off by up to {off:g} from the packed checkpoint's"
        assert torch.equal(m.dense_weight(), want[name].dense_weight()), name
