"""GGUF block grids: slmkit's Q8_0 / Q5_0 / Q4_0 / Q6_K / Q5_K / Q4_K grids and their bytes. The bytes dequantize, in
gguf-py's reader (and in ggml itself when llama-cpp-python is installed), to exactly the weights
slmkit computes; a model quantized onto them exports with its integers and scales unchanged."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from slmkit.compress import AWQConfig, GPTQConfig, RTNConfig, quantize
from slmkit.compress.api import check_quantize
from slmkit.compress.quantize.config import gguf_grid
from slmkit.errors import SlmkitError
from slmkit.models import load, save, tiny
from slmkit.models.gguf_export import describe_gguf, export_gguf, permute_qk
from slmkit.runtime import ggml_blocks as gb
from slmkit.runtime.qweight import GGUF, GGUF_K, rtn, split_k, split_q6_k

TYPES = list(gb.BLOCK_TYPES)
ZERO_TYPES = [k for k, t in gb.BLOCK_TYPES.items() if t.weights == t.group]   # one float16 scale per block


def on_grid(name: str, w: torch.Tensor):
    return rtn(w, *gguf_grid(name))


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
    assert torch.equal(back.dequantize(), qw.dequantize())


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
    cfg = RTNConfig(gguf_type="q4_k")
    assert (cfg.bits, cfg.group_size, cfg.symmetric) == (4, 32, GGUF_K)
    with pytest.raises(SlmkitError, match="256-weight blocks, and this linear has 64 inputs"):
        quantize(model, RTNConfig(overrides={"q": {"gguf_type": "q5_k"}}))
    with pytest.raises(SlmkitError, match="q4_1"):
        RTNConfig(gguf_type="q4_1")
    with pytest.raises(SlmkitError, match="gguf_type"):
        quantize(tiny.tiny_model("llama"), RTNConfig(overrides={"down": {"gguf_type": 8}}))


@pytest.mark.parametrize("model_type, method, down", [
    ("llama", "rtn", "q6_k"), ("qwen2", "rtn", "q4_k"), ("llama", "gptq", "q4_k"),
    ("qwen2", "gptq", "q6_k"), ("llama", "awq", "q5_k"), ("qwen2", "awq", "q4_k")])
def test_a_model_quantized_onto_gguf_grids_exports_its_integers_unchanged(tmp_path, model_type, method, down):
    model = tiny.tiny_model(model_type, initializer_range=0.1, intermediate_size=256)
    tok = tiny.tiny_tokenizer()
    grids = dict(gguf_type="q4_0", overrides={"down": {"gguf_type": down}, "v": {"gguf_type": "q5_0"},
                                              "up": {"gguf_type": "q8_0"}})
    if method == "rtn":
        quantize(model, RTNConfig(**grids))
    else:
        calib = torch.randint(3, 500, (4, 32), generator=torch.Generator().manual_seed(1))
        quantize(model, (GPTQConfig if method == "gptq" else AWQConfig)(**grids), calib)
    path = export_gguf(model, tok, tmp_path / "m.gguf", "q8_0")
    info = describe_gguf(path)
    types = info["tensor_types"]
    assert types["blk.0.ffn_down.weight"] == down.upper() and types["blk.0.attn_v.weight"] == "Q5_0"
    assert types["blk.1.ffn_up.weight"] == "Q8_0" and types["blk.1.attn_q.weight"] == "Q4_0"

    file = gguf.GGUFReader(path)
    held: dict[str, int] = {}                 # weights per type: the file type names the largest share
    for t in file.tensors:
        if len(t.shape) > 1:
            held[t.tensor_type.name] = held.get(t.tensor_type.name, 0) + int(t.n_elements)
    most = max(held, key=held.get)
    most = most + "_M" if most in ("Q4_K", "Q5_K") else most     # llama.cpp names the K-quant mixes
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


def _ggml():
    """ggml's own dequantizer and reference quantizer (`ggml_get_type_traits(type)->to_float`,
    `->from_float_ref`) from the library that llama-cpp-python ships, or None when it is not
    installed."""
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
    floats = ctypes.POINTER(ctypes.c_float)
    to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, floats, ctypes.c_int64)
    from_float_t = ctypes.CFUNCTYPE(None, floats, ctypes.c_void_p, ctypes.c_int64)

    class Traits(ctypes.Structure):
        _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                    ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                    ("is_quantized", ctypes.c_bool), ("to_float", to_float_t),
                    ("from_float_ref", from_float_t)]

    lib.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]

    def traits(name: str) -> Traits:
        t = lib.ggml_get_type_traits(int(gguf.GGMLQuantizationType[gb.BLOCK_TYPES[name].name])).contents
        assert t.blck_size == gb.BLOCK_TYPES[name].weights
        return t

    def to_float(raw: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
        out = np.empty(shape, dtype=np.float32)
        traits(name).to_float(np.ascontiguousarray(raw).ctypes.data, out.ctypes.data_as(floats), out.size)
        return out

    def from_float(w: np.ndarray, name: str) -> np.ndarray:
        t = gb.BLOCK_TYPES[name]
        x = np.ascontiguousarray(w, dtype=np.float32)
        raw = np.empty((x.shape[0], x.shape[1] // t.weights * t.block_bytes), dtype=np.uint8)
        traits(name).from_float_ref(x.ctypes.data_as(floats), raw.ctypes.data, x.size)
        return raw

    return to_float, from_float


@pytest.mark.parametrize("name", TYPES)
def test_ggml_itself_dequantizes_the_bytes_to_exactly_slmkits_weights(name):
    ggml = _ggml()
    if ggml is None:
        pytest.skip("llama-cpp-python (slmkit[llamacpp]) is not installed")
    to_float, from_float = ggml
    qw = on_grid(name, weights(cols=512))
    assert bits_equal(to_float(gb.encode(qw), name, tuple(qw.q.shape)), qw.dequantize().numpy())
    # and slmkit reads llama.cpp's own bytes of that type to the weights ggml computes from them
    w = weights(cols=512, seed=3).numpy()
    raw = from_float(w, name)
    assert bits_equal(gb.decode(raw, name, 512).dequantize().numpy(), to_float(raw, name, w.shape))


@pytest.mark.parametrize("name", ["q4_k", "q5_k"])
def test_q4_k_and_q5_k_scales_and_mins_are_6_bit_multiples_of_two_float16_values(name):
    w = weights(cols=512)
    qw = on_grid(name, w)
    assert gb.gguf_type(qw) == name and qw.offset is not None
    for values in (qw.scale, qw.offset):
        d, n = split_k(values)
        assert torch.equal(d.half().float(), d) and torch.equal((d[..., None] * n).reshape(values.shape), values)
        assert n.max() == 63 and n.min() >= 0
    assert (qw.scale > 0).all()
    assert torch.allclose(qw.zero * qw.scale, qw.offset, rtol=1e-6, atol=1e-9)  # kernels' zero: float error
    assert torch.equal(qw.q[5, 64:96].float() * qw.scale[5, 2] - qw.offset[5, 2], torch.zeros(32))
    # the grid spans [min(w, 0), max(w)]: one shared min/max per 32 weights costs ~1.3x the error of
    # llama.cpp's weighted search at most; the calibrating quantizers search clips on top of it
    ggml = _ggml()
    if ggml is not None:
        to_float, from_float = ggml
        theirs = torch.from_numpy(to_float(from_float(w.numpy(), name), name, tuple(w.shape)))
        assert (qw.dequantize() - w).square().mean() < 1.3 * (theirs - w).square().mean()
    asymmetric_int4 = rtn(w, 4, 32, False)              # integer zero points: not Q4_K
    assert gb.gguf_type(asymmetric_int4) is None
    off = on_grid(name, w)
    off.offset[0, 0] *= 1.001
    assert gb.gguf_type(off) is None


def test_a_k_quant_model_saves_loads_and_exports_its_exact_grid(tmp_path):
    model = tiny.tiny_model("llama", initializer_range=0.1, intermediate_size=256)
    tok = tiny.tiny_tokenizer()
    quantize(model, RTNConfig(gguf_type="q4_0", overrides={"down": {"gguf_type": "q4_k"}}))
    save(model, tok, tmp_path / "m")
    loaded, _ = load(tmp_path / "m", "float32")
    a, b = model.model.layers[1].mlp.down_proj, loaded.model.layers[1].mlp.down_proj
    assert torch.equal(a.offset, b.offset) and torch.equal(a.scale, b.scale)
    assert torch.equal(a.quantized_weight().dequantize(), b.quantized_weight().dequantize())
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a(x), b(x))
    assert (b(x) - x @ b.quantized_weight().dequantize().T).abs().max() < 1e-3
    first = export_gguf(model, tok, tmp_path / "a.gguf", "q8_0")
    second = export_gguf(loaded, tok, tmp_path / "b.gguf", "q8_0")
    ta = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(first).tensors}
    tb = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(second).tensors}
    assert describe_gguf(second)["tensor_types"]["blk.1.ffn_down.weight"] == "Q4_K"
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)


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


@pytest.mark.parametrize("name", ["q4_k", "q5_k"])
def test_the_free_min_search_fits_k_grids_closer_than_min_max(name):
    from slmkit.compress.quantize.grid_search import search_grid
    from slmkit.runtime.qweight import grid, quantize_column

    bits = gb.BLOCK_TYPES[name].bits
    w = weights(cols=512, seed=4).reshape(-1, 32)
    imp = torch.rand(32, generator=torch.Generator().manual_seed(1)) + 0.1

    def err(scale, zero):
        q = quantize_column(w, scale[:, None], zero[:, None], bits)
        return float((((q - zero[:, None]) * scale[:, None] - w).square() * imp).sum())
    searched, plain = err(*search_grid(w, bits, GGUF_K, imp)), err(*grid(w, bits, GGUF_K))
    assert searched < 0.9 * plain
    s, z = search_grid(w, bits, GGUF_K, imp)
    assert (s > 0).all() and (z >= 0).all()             # min <= 0: zero stays representable
