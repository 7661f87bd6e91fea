"""The shared layer-sequential calibration loop and target selection."""

import pytest
import torch

from slmkit.compress.calibrate import HessianCollector, calibration_autocast, sequential
from slmkit.compress.targets import all_targets, layer_targets
from slmkit.errors import SlmkitError
from slmkit.models import ARCHS, get_arch
from slmkit.models.tiny import tiny_model


def calib_ids(n=5, length=64, seed=0):
    return torch.randint(3, 500, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_each_layer_sees_exactly_the_hidden_states_of_a_full_forward(model_type):
    """With no edits, the inputs `run()` feeds layer i equal hidden_states[i] of a normal forward
    (gemma3: 64 tokens > its 32-token sliding window, so per-layer masks matter)."""
    # 3 layers, so propagation through a layer of one kind feeds a layer of another kind
    extra = {"layer_types": ["sliding_attention", "full_attention", "sliding_attention"]} \
        if model_type == "gemma3_text" else {}
    model = tiny_model(model_type, seed=7, num_hidden_layers=3, **extra)
    ids = calib_ids()
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states
    seen: dict[int, list[torch.Tensor]] = {}

    def on_layer(i, layer, run):
        hook = layer.register_forward_pre_hook(lambda m, args: seen.setdefault(i, []).append(args[0].clone()))
        run()
        hook.remove()

    sequential(model, ids, on_layer, batch_size=2)  # float32 by default
    n_layers = len(get_arch(model).decoder_layers(model))
    assert sorted(seen) == list(range(n_layers))
    for i in range(n_layers):
        torch.testing.assert_close(torch.cat(seen[i]), ref[i], rtol=1e-5, atol=1e-5)


def test_edits_propagate_to_the_next_layer():
    """Zeroing a layer's output projections makes it the identity (residual only), so the next
    layer must receive that layer's own inputs: later layers see the edited model."""
    model = tiny_model("llama", seed=1)
    spec = get_arch(model)
    inputs: dict[int, torch.Tensor] = {}

    def on_layer(i, layer, run):
        hook = layer.register_forward_pre_hook(lambda m, args: inputs.setdefault(i, args[0].clone()))
        run()
        hook.remove()
        if i == 0:
            with torch.no_grad():
                spec.linears(layer)["o"].weight.zero_()
                spec.linears(layer)["down"].weight.zero_()

    sequential(model, calib_ids(n=2), on_layer, batch_size=2)
    torch.testing.assert_close(inputs[1], inputs[0])


def test_bad_calibration_input_is_refused():
    model = tiny_model("llama")
    with pytest.raises(SlmkitError, match="calibration ids"):
        sequential(model, torch.zeros(4, dtype=torch.long), lambda *a: None)
    with pytest.raises(SlmkitError, match="batch_size"):
        sequential(model, calib_ids(), lambda *a: None, batch_size=0)


def test_unknown_architecture_is_refused_clearly():
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    model = AutoModelForCausalLM.from_config(GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=64))
    with pytest.raises(SlmkitError, match="gpt_neox"):
        sequential(model, calib_ids(n=1, length=8) % 64, lambda *a: None)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_targets_name_real_modules(model_type):
    model = tiny_model(model_type)
    named = dict(model.named_modules())
    targets = all_targets(model)
    assert len(targets) == model.config.num_hidden_layers * len(get_arch(model).linear_paths())
    for t in targets:
        assert named[t.name] is t.module
    kept = layer_targets(model, 0, skip=("down", "*.o_proj", "*.c_proj", "*.out_proj"))
    assert all(t.role not in ("down", "o") for t in kept) and kept


def test_capture_restores_an_existing_instance_forward():
    model = tiny_model("llama")
    layer0 = get_arch(model).decoder_layers(model)[0]
    original = layer0.forward
    calls = []

    def wrapped(*args, **kwargs):  # what tooling such as accelerate installs on an instance
        calls.append(1)
        return original(*args, **kwargs)

    layer0.forward = wrapped
    sequential(model, calib_ids(n=1, length=8), lambda i, layer, run: run())
    assert layer0.__dict__["forward"] is wrapped
    n = len(calls)
    with torch.no_grad():
        model(calib_ids(n=1, length=8))
    assert len(calls) == n + 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_calibration_precision(dtype):
    """bf16: the linears multiply in bf16 under autocast, the hidden states between layers stay
    float32 and close to a float32 forward's; float32: exact."""
    model = tiny_model("llama", seed=3, num_hidden_layers=3)
    ids = calib_ids()
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states
    seen: dict[int, list[torch.Tensor]] = {}
    out_dtypes = set()

    def on_layer(i, layer, run):
        hooks = [layer.register_forward_pre_hook(lambda m, args: seen.setdefault(i, []).append(args[0].clone())),
                 *[t.module.register_forward_hook(lambda m, args, out: out_dtypes.add(out.dtype))
                   for t in layer_targets(model, i, ()) if t.role == "down"]]
        run()
        for h in hooks:
            h.remove()

    sequential(model, ids, on_layer, batch_size=2, dtype=dtype)
    assert out_dtypes == {getattr(torch, dtype)}
    tol = 1e-5 if dtype == "float32" else 3e-2
    for i in range(3):
        assert all(h.dtype == torch.float32 for h in seen[i])
        torch.testing.assert_close(torch.cat(seen[i]), ref[i], rtol=tol, atol=tol)


def test_statistics_are_float32_math_under_bf16_passes():
    """A Hessian collected during bf16 passes is the float32 X^T X of the inputs the linear saw,
    not a bf16 matmul (whose rounding left real Hessians indefinite: negative eigenvalues of ~1e-3
    of the largest, so Cholesky failed at the usual dampening)."""
    model = tiny_model("llama", seed=3, num_hidden_layers=2)
    got = {}

    def on_layer(i, layer, run):
        if i != 1:
            return
        down = next(t for t in layer_targets(model, i, ()) if t.role == "down")
        inputs = []
        hook = down.module.register_forward_pre_hook(lambda m, args: inputs.append(args[0].float().reshape(-1, args[0].shape[-1])))
        with HessianCollector({"down": down.module}) as hc:
            run()
        hook.remove()
        x = torch.cat(inputs).double()
        got["H"], got["ref"] = hc.H["down"].double(), 2 * x.T @ x / x.shape[0]

    sequential(model, calib_ids(), on_layer, batch_size=2, dtype="bfloat16")
    torch.testing.assert_close(got["H"], got["ref"], rtol=1e-5, atol=1e-6 * got["ref"].abs().max().item())


def test_auto_precision_follows_the_cpu_and_skips_non_float32_models():
    from slmkit.runtime.cpu import has_native_bf16

    model = tiny_model("llama", seed=0)
    assert calibration_autocast(model, "auto")._enabled == has_native_bf16()
    assert calibration_autocast(model, "bfloat16")._enabled
    assert not calibration_autocast(model, "float32")._enabled
    assert not calibration_autocast(model.to(torch.bfloat16), "bfloat16")._enabled  # already bf16
    with pytest.raises(SlmkitError, match="calib_dtype must be one of auto, float32, bfloat16"):
        calibration_autocast(model, "float16")
