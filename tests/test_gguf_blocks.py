"""GGUF block grids: slmkit's Q8_0 / Q5_0 / Q4_0 grids and their bytes. The bytes dequantize, in
gguf-py's reader (and in ggml itself when llama-cpp-python is installed), to exactly the weights
slmkit computes; a model quantized onto them exports with its integers and scales unchanged."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from slmkit.compress import AWQConfig, GPTQConfig, RTNConfig, quantize
from slmkit.compress.api import check_quantize
from slmkit.errors import SlmkitError
from slmkit.models import tiny
from slmkit.models.gguf_export import describe_gguf, export_gguf, permute_qk
from slmkit.runtime import ggml_blocks as gb
from slmkit.runtime.qweight import GGUF, rtn, split_q6_k

TYPES = list(gb.BLOCK_TYPES)
ZERO_TYPES = [k for k, t in gb.BLOCK_TYPES.items() if t.weights == t.group]   # one float16 scale per block


def on_grid(name: str, w: torch.Tensor):
    t = gb.BLOCK_TYPES[name]
    return rtn(w, t.bits, t.group, GGUF)


def weights(rows=48, cols=256, seed=0) -> torch.Tensor:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05
    w[3, 5], w[4, 40] = 0.9, -0.7        # a positive and a negative extreme in their blocks
    w[5, 64:96] = 0                      # an all-zero block
    w[6, 100] = 1e-6                     # a block whose scale is a float16 subnormal
    w[6, 96:100] = 0
    w[6, 101:128] = 0
    return w


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.astype(np.float32).view(np.uint32),
                                                 b.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("name", TYPES)
def test_the_bytes_dequantize_in_gguf_to_exactly_slmkits_weights(name):
    qw = on_grid(name, weights())
    assert gb.gguf_type(qw) == name
    raw = gb.encode(qw)
    t = gb.BLOCK_TYPES[name]
    assert raw.shape == (48, 256 // t.weights * t.block_bytes)
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[gb.BLOCK_TYPES[name].name])
    assert bits_equal(theirs, qw.dequantize().numpy())
    back = gb.decode(raw, name, 256)
    assert torch.equal(back.q, qw.q) and torch.equal(back.scale, qw.scale)


@pytest.mark.parametrize("name", ZERO_TYPES)
def test_the_grid_puts_each_blocks_extreme_on_the_full_negative_level(name):
    bits = gb.BLOCK_TYPES[name].bits
    qw = rtn(weights(), bits, 32, GGUF)
    assert (qw.scale.half().float() == qw.scale).all()
    assert qw.q[3, 5] == 0 and qw.q[4, 40] == 0             # code 0 = -2^(bits-1) levels
    assert qw.scale[3, 0] < 0 < qw.scale[4, 1]
    # no worse than llama.cpp's own rounding (gguf-py's port of it) on the same weights
    w = weights()
    theirs = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType[
        gb.BLOCK_TYPES[name].name]), gguf.GGMLQuantizationType[gb.BLOCK_TYPES[name].name])
    ours = (qw.dequantize() - w).square().mean()
    assert ours <= (torch.from_numpy(theirs) - w).square().mean() * 1.01


def test_only_exact_grids_are_gguf_grids():
    w = weights()
    assert gb.gguf_type(rtn(w, 4, 32, True)) is None          # scale max|w| / 7: not float16
    assert gb.gguf_type(rtn(w, 4, 32, False)) is None         # zero points vary
    assert gb.gguf_type(rtn(w, 4, 64, GGUF)) is None          # blocks of 64
    assert gb.gguf_type(rtn(w, 6, 32, GGUF)) is None          # no 6-bit block type here
    assert gb.gguf_type(rtn(w[:, :200], 4, 32, GGUF)) is None  # a row of 6.25 blocks
    qw = rtn(w, 4, 32, GGUF)
    qw.scale[0, 0] *= 1.0001
    assert gb.gguf_type(qw) is None
    with pytest.raises(SlmkitError, match="not on"):
        gb.encode(qw)
    with pytest.raises(SlmkitError, match="q5_0"):
        gb.encode(rtn(w, 4, 32, GGUF), "q5_0")


def test_a_gguf_type_sets_the_grid_and_bad_ones_are_refused():
    cfg = RTNConfig(gguf_type="q5_0")
    assert (cfg.bits, cfg.group_size, cfg.symmetric) == (5, 32, GGUF)
    cfg = RTNConfig(gguf_type="q6_k")
    assert (cfg.bits, cfg.group_size, cfg.symmetric) == (6, 16, GGUF)
    model = tiny.tiny_model("llama", intermediate_size=256)
    with pytest.raises(SlmkitError, match="256-weight blocks, and this linear has 64 inputs"):
        quantize(model, RTNConfig(gguf_type="q6_k"))
    dynamic = GPTQConfig(overrides={"down": {"gguf_type": "q6_k"}}, static_groups=False, act_order=False)
    with pytest.raises(SlmkitError, match="static_groups"):
        check_quantize(model, dynamic)                      # before any calibration pass
    with pytest.raises(SlmkitError, match="static_groups"):
        calib = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(1))
        quantize(model, dynamic, calib)
    with pytest.raises(SlmkitError, match="q4_k"):
        RTNConfig(gguf_type="q4_k")
    with pytest.raises(SlmkitError, match="gguf_type"):
        quantize(tiny.tiny_model("llama"), RTNConfig(overrides={"down": {"gguf_type": 8}}))


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_a_model_quantized_onto_gguf_grids_exports_its_integers_unchanged(tmp_path, model_type, method):
    model = tiny.tiny_model(model_type, initializer_range=0.1, intermediate_size=256)
    tok = tiny.tiny_tokenizer()
    grids = dict(gguf_type="q4_0", overrides={"down": {"gguf_type": "q6_k"}, "v": {"gguf_type": "q5_0"},
                                              "up": {"gguf_type": "q8_0"}})
    if method == "rtn":
        quantize(model, RTNConfig(**grids))
    else:
        calib = torch.randint(3, 500, (4, 32), generator=torch.Generator().manual_seed(1))
        quantize(model, (GPTQConfig if method == "gptq" else AWQConfig)(**grids), calib)
    path = export_gguf(model, tok, tmp_path / "m.gguf", "q8_0")
    info = describe_gguf(path)
    types = info["tensor_types"]
    assert types["blk.0.ffn_down.weight"] == "Q6_K" and types["blk.0.attn_v.weight"] == "Q5_0"
    assert types["blk.1.ffn_up.weight"] == "Q8_0" and types["blk.1.attn_q.weight"] == "Q4_0"

    file = gguf.GGUFReader(path)
    held: dict[str, int] = {}                 # weights per type: the file type names the largest share
    for t in file.tensors:
        if len(t.shape) > 1:
            held[t.tensor_type.name] = held.get(t.tensor_type.name, 0) + int(t.n_elements)
    most = max(held, key=held.get)
    assert file.fields["general.file_type"].contents() == int(gguf.LlamaFileType[f"MOSTLY_{most}"])
    reader = {t.name: t for t in file.tensors}
    cfg = model.config
    for i, layer in enumerate(model.model.layers):
        for gname, module in [("attn_q", layer.self_attn.q_proj), ("attn_k", layer.self_attn.k_proj),
                              ("attn_v", layer.self_attn.v_proj), ("ffn_down", layer.mlp.down_proj),
                              ("ffn_up", layer.mlp.up_proj)]:
            t = reader[f"blk.{i}.{gname}.weight"]
            theirs = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            ours = module.dense_weight().float()
            if model_type == "llama" and gname in ("attn_q", "attn_k"):
                heads = cfg.num_attention_heads if gname == "attn_q" else cfg.num_key_value_heads
                ours = permute_qk(ours, heads)
            assert bits_equal(theirs, ours.numpy()), (model_type, i, gname)


def test_linears_off_the_gguf_grids_are_requantized(tmp_path):
    model = tiny.tiny_model("qwen2", initializer_range=0.1)
    quantize(model, RTNConfig(bits=4, group_size=32))       # asymmetric: not a GGUF grid
    path = export_gguf(model, tiny.tiny_tokenizer(), tmp_path / "m.gguf", "q4_0")
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.ffn_up.weight")
    assert t.tensor_type.name == "Q4_0"
    theirs = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    ours = model.model.layers[0].mlp.up_proj.dense_weight().float().numpy()
    assert not bits_equal(theirs, ours) and np.abs(theirs - ours).max() < 0.05


def _ggml_to_float():
    """ggml's own dequantizer (`ggml_get_type_traits(type)->to_float`) from the library that
    llama-cpp-python ships, or None when it is not installed."""
    import ctypes
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None:
        return None
    libs = sorted(Path(spec.origin).parent.glob("lib/libggml-base.*")) or \
        sorted(Path(spec.origin).parent.glob("lib/libggml.*"))
    if not libs:
        return None
    lib = ctypes.CDLL(str(libs[0]))
    to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)

    class Traits(ctypes.Structure):
        _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                    ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                    ("is_quantized", ctypes.c_bool), ("to_float", to_float_t),
                    ("from_float_ref", ctypes.c_void_p)]

    lib.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]

    def to_float(raw: np.ndarray, type_id: int, n: int, block: int) -> np.ndarray:
        traits = lib.ggml_get_type_traits(type_id).contents
        assert traits.blck_size == block
        out = np.empty(n, dtype=np.float32)
        src = np.ascontiguousarray(raw)
        traits.to_float(src.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n)
        return out

    return to_float


@pytest.mark.parametrize("name", TYPES)
def test_ggml_itself_dequantizes_the_bytes_to_exactly_slmkits_weights(name):
    to_float = _ggml_to_float()
    if to_float is None:
        pytest.skip("llama-cpp-python (slmkit[llamacpp]) is not installed")
    qw = on_grid(name, weights())
    type_id = int(gguf.GGMLQuantizationType[gb.BLOCK_TYPES[name].name])
    theirs = to_float(gb.encode(qw), type_id, qw.q.numel(), gb.BLOCK_TYPES[name].weights).reshape(qw.q.shape)
    assert bits_equal(theirs, qw.dequantize().numpy())


def test_q6_k_scales_are_a_float16_d_times_int8_sub_scales_per_256_weights():
    w = weights(cols=512)
    qw = on_grid("q6_k", w)
    d, sub = split_q6_k(qw.scale)
    assert torch.equal(d.half().float(), d) and torch.equal((d[..., None] * sub).reshape(qw.scale.shape), qw.scale)
    assert (sub.abs().amax(-1) == 127).all() and (sub != 0).all()
    plain = rtn(w, 6, 16, True)                         # one float32 scale per 16 weights
    err = (qw.dequantize() - w).square().mean()
    assert err < 1.5 * (plain.dequantize() - w).square().mean()   # the two-level scales cost little
    unsnapped = rtn(w, 6, 16, True)
    unsnapped.zero.fill_(32)
    assert gb.gguf_type(unsnapped) is None
    assert gb.gguf_type(rtn(w[:, :384], 6, 16, GGUF)) is None  # 1.5 blocks per row
