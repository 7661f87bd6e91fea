"""Per-linear GGUF types by measured sensitivity: the knapsack on constructed options, and the
predicted losses on a tiny model."""

from __future__ import annotations

import itertools

import pytest
import torch

from slmkit.compress.allocate import _lower_hull, allocate, choose, type_bytes
from slmkit.compress.targets import all_targets
from slmkit.errors import SlmkitError
from slmkit.models import tiny


def brute_force(options, budget):
    names = list(options)
    best = None
    for combo in itertools.product(*(options[n].items() for n in names)):
        size = sum(b for _, (b, _) in combo)
        loss = sum(dl for _, (_, dl) in combo)
        if size <= budget and (best is None or loss < best[0]):
            best = (loss, {n: t for n, (t, _) in zip(names, combo)})
    return best


def test_the_greedy_choice_spends_the_budget_where_loss_falls_most_per_byte():
    options = {"a": {"q4_0": (100, 10.0), "q5_0": (120, 4.0), "q8_0": (180, 1.0)},
               "b": {"q4_0": (100, 2.0), "q5_0": (120, 1.5), "q8_0": (180, 1.4)},
               "c": {"q4_0": (100, 6.0), "q5_0": (120, 3.0), "q8_0": (180, 0.5)}}
    small = choose(options, 300)
    assert small.types == {"a": "q4_0", "b": "q4_0", "c": "q4_0"} and small.bytes == 300
    step = choose(options, 340)
    assert step.types == {"a": "q5_0", "b": "q4_0", "c": "q5_0"}      # the two steepest upgrades
    assert step.predicted_dl == pytest.approx(4.0 + 2.0 + 3.0)
    for budget in (300, 320, 340, 380, 400, 460, 540):
        got = choose(options, budget)
        assert got.bytes <= budget
        assert got.predicted_dl <= brute_force(options, budget)[0] * 1.35    # near the optimum
    assert choose(options, 10_000).types == {"a": "q8_0", "b": "q8_0", "c": "q8_0"}
    with pytest.raises(SlmkitError, match="below the smallest choice"):
        choose(options, 299)


def test_the_hull_drops_types_that_cost_more_and_lose_no_less():
    hull = _lower_hull({"q4_0": (100, 5.0), "q4_k": (100, 4.0), "q5_0": (120, 4.5),
                        "q5_k": (120, 2.0), "q6_k": (140, 1.9), "q8_0": (180, 0.2)})
    assert [name for name, _, _ in hull] == ["q4_k", "q5_k", "q8_0"]


def test_types_are_measured_on_a_model_and_fit_the_budget():
    model = tiny.tiny_model("llama", initializer_range=0.1, intermediate_size=256)
    calib = torch.randint(3, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    targets = all_targets(model)
    plan = allocate(model, calib, targets, 5.5, rows=2)
    n = sum(t.weight().numel() for t in targets)
    assert plan.bytes <= 5.5 * n / 8 and plan.bytes > 4.5 * n / 8
    for t in targets:
        opts = plan.options[t.name]
        wide = t.weight().shape[1] % 256 == 0
        assert ("q4_k" in opts) == wide and "q4_0" in opts
        # more bits, less predicted loss: each type's error is measured, not assumed
        assert opts["q8_0"][1] < opts["q5_0"][1] < opts["q4_0"][1]
        assert opts["q4_0"][0] == type_bytes("q4_0", tuple(t.weight().shape))
    assert set(plan.types.values()) > {"q4_0"} or set(plan.types.values()) > {"q4_k"}
    with pytest.raises(SlmkitError, match="none of q4_k fits"):
        allocate(model, calib, targets, 5.0, types=["q4_k"])
    with pytest.raises(SlmkitError, match="q4_1"):
        allocate(model, calib, targets, 5.0, types=["q4_1"])


def test_a_bits_per_weight_budget_quantizes_each_linear_onto_its_chosen_type(tmp_path):
    from slmkit.compress import GPTQConfig, RTNConfig, quantize
    from slmkit.compress.api import check_quantize
    from slmkit.models.gguf_export import describe_gguf, export_gguf
    from slmkit.runtime.ggml_blocks import gguf_type

    model = tiny.tiny_model("qwen2", initializer_range=0.1, intermediate_size=256)
    calib = torch.randint(3, 500, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize(model, RTNConfig(gguf_bpw=5.5), calib)
    step = model._slmkit_steps[-1]
    chosen = step["gguf_types"]["types"]
    assert step["config"]["gguf_bpw"] == 5.5 and len(chosen) == len(all_targets(tiny.tiny_model("qwen2")))
    held = {}
    for name, module in model.named_modules():
        if name in chosen:
            assert gguf_type(module.quantized_weight()) == chosen[name]
            held[chosen[name]] = held.get(chosen[name], 0) + 1
    assert len(held) >= 2                     # a mix, not one type everywhere
    types = describe_gguf(export_gguf(model, tiny.tiny_tokenizer(), tmp_path / "m.gguf", "q8_0"))["tensor_types"]
    assert types["blk.0.ffn_down.weight"].lower() == chosen["model.layers.0.mlp.down_proj"]

    with pytest.raises(SlmkitError, match="calibration"):
        quantize(tiny.tiny_model("qwen2"), RTNConfig(gguf_bpw=5.5))
    with pytest.raises(SlmkitError, match=r"\[4, 8.5\]"):
        RTNConfig(gguf_bpw=3)
    with pytest.raises(SlmkitError, match="drop gguf_type"):
        RTNConfig(gguf_bpw=5, gguf_type="q4_0")
    with pytest.raises(SlmkitError, match="static_groups"):
        check_quantize(tiny.tiny_model("qwen2"), GPTQConfig(gguf_bpw=5, static_groups=False, act_order=False))
    with pytest.raises(SlmkitError, match="none of gguf_types"):
        check_quantize(tiny.tiny_model("qwen2"), RTNConfig(gguf_bpw=5, gguf_types=["q4_k", "q6_k"]))
