"""THE layer-sequential calibration loop shared by every one-shot method (GPTQ, AWQ, Wanda,
SparseGPT, ...), so only one decoder layer's activations are held at a time.

1. Capture: one forward over the calibration batches with every decoder layer replaced by a
   recorder that stores the layer's own call arguments (attention mask, position ids, rotary
   embeddings — which differ between layers, e.g. Gemma 3's sliding and full layers) and passes
   the hidden states through untouched. Cost: the embeddings, and nothing else of substance.
2. For each layer in order: `on_layer(index, layer, run)` — the method registers its hooks and
   calls `run()` to push every batch through the layer (collecting statistics), then edits the
   layer's weights. The loop then pushes the batches through the edited layer once more; those
   outputs are the next layer's inputs ("true sequential": later layers calibrate on what the
   compressed earlier layers actually produce).

Precision (`dtype`, every calibrating config's `calib_dtype`, float32 by default: bf16 passes
matched it on SmolLM2 GPTQ, not yet measured side by side on Qwen2.5): the passes run a float32 model
under bf16 autocast for "bfloat16", and for "auto" where it picks bf16 for prefill-like work
(CPUs with AMX / AVX512-BF16, where a SmolLM2 layer pass over 8 x 512 tokens takes 0.08 s in bf16 vs 0.25 s in float32), and in
float32 elsewhere (on AVX2-only CPUs bf16 matmuls are emulated and ~6x slower). Hidden states
between layers stay float32 (the residual stream adds in float32), the statistics hooks see
float32 inputs, and Hessians and norms accumulate in float32 either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from slmkit.errors import SlmkitError
from slmkit.models.arch import get_arch
from slmkit.models.dtype import resolve_dtype
from slmkit.models.introspect import accepts_logits_to_keep
from slmkit.progress import progress_bar

if TYPE_CHECKING:
    import torch
    from torch import nn

CalibDtype = Literal["auto", "float32", "bfloat16"]
CALIB_DTYPES = ("auto", "float32", "bfloat16")


def calib_dtype_field():
    """The `calib_dtype` field every calibrating config carries."""
    return field(default="float32", metadata={
        "help": "precision of the calibration passes: float32; bfloat16 (bf16 autocast, ~3x faster "
                "on CPUs with AMX / AVX512-BF16); auto = bf16 where the CPU has native bf16, float32 "
                "elsewhere. Statistics accumulate in float32 either way"})


def calibration_autocast(model: "nn.Module", dtype: str):
    """The autocast context the calibration passes of `model` run in (see the module doc): bf16
    autocast for a float32 model when `dtype` resolves to bf16, otherwise a no-op."""
    import torch

    if dtype not in CALIB_DTYPES:
        raise SlmkitError(f"calib_dtype must be one of {', '.join(CALIB_DTYPES)}, not {dtype!r}")
    param = next(model.parameters(), None)
    on = (resolve_dtype(dtype, "prefill") == torch.bfloat16 and param is not None
          and param.dtype == torch.float32)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=on)


@dataclass
class LayerCall:
    """One batch's call of one decoder layer, minus the hidden states."""
    args: tuple
    kwargs: dict[str, Any]


def _capture(model, layers, batches: list["torch.Tensor"]) -> tuple[list["torch.Tensor"], list[list[LayerCall]]]:
    """Hidden states entering layer 0, and every layer's call arguments, for each batch."""
    import torch

    inputs: list[torch.Tensor] = []
    calls: list[list[LayerCall]] = [[] for _ in layers]

    def recorder(index: int):
        def forward(hidden_states, *args, **kwargs):
            if index == 0:
                inputs.append(hidden_states)
            kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache", "use_cache")}
            calls[index].append(LayerCall(args, kwargs))
            return hidden_states
        return forward

    previous = [layer.__dict__.get("forward") for layer in layers]  # e.g. accelerate's hooks
    for i, layer in enumerate(layers):
        layer.forward = recorder(i)  # instance attribute shadows the class's forward
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    try:
        with torch.inference_mode():
            for ids in batches:
                model(input_ids=ids, use_cache=False, **extra)
    finally:
        for layer, prev in zip(layers, previous):
            if prev is None:
                del layer.forward
            else:
                layer.forward = prev
    return inputs, calls


def _run_layer(layer, hidden: "torch.Tensor", call: LayerCall) -> "torch.Tensor":
    out = layer(hidden, *call.args, **call.kwargs)
    if isinstance(out, tuple):  # older transformers returned (hidden_states, ...)
        out = out[0]
    return out


class LayerPass:
    """What `on_layer` receives as `run`. `run()` pushes every calibration batch through the
    layer (in the calibration precision), for statistics hooks."""

    def __init__(self, layer: "nn.Module", hidden: list["torch.Tensor"], calls: list[LayerCall], precision):
        self.layer, self.hidden, self.calls, self.precision = layer, hidden, calls, precision

    def __call__(self) -> None:
        import torch

        with torch.inference_mode(), self.precision:
            for h, call in zip(self.hidden, self.calls):
                _run_layer(self.layer, h, call)


def sequential(model: "nn.Module", calib: "torch.Tensor",
               on_layer: Callable[[int, "nn.Module", LayerPass], None], *,
               batch_size: int = 8, description: str = "calibrating", dtype: str = "float32") -> None:
    """Walk the decoder layers in order with calibration token ids `calib` [n, length], the
    passes in `dtype` ("auto", "float32" or "bfloat16"; see the module doc)."""
    import torch

    if calib.ndim != 2 or calib.shape[0] < 1 or calib.shape[1] < 2:
        raise SlmkitError(f"calibration ids must be [n >= 1, length >= 2], got {tuple(calib.shape)}")
    if batch_size < 1:
        raise SlmkitError(f"batch_size must be >= 1, not {batch_size}")
    precision = calibration_autocast(model, dtype)
    layers = get_arch(model).decoder_layers(model)
    batches = list(calib.split(batch_size))
    with precision:
        hidden, calls = _capture(model, layers, batches)
    if len(hidden) != len(batches):
        raise SlmkitError("the model never called its first decoder layer during calibration capture")
    with progress_bar(description, len(layers), unit="layers") as advance:
        for i, layer in enumerate(layers):
            on_layer(i, layer, LayerPass(layer, hidden, calls[i], precision))
            with torch.inference_mode(), precision:
                hidden = [_run_layer(layer, h, call) for h, call in zip(hidden, calls[i])]
            advance(1)


class InputHooks:
    """Base of the statistics collectors: `with Collector({name: module}) as c: run()` calls
    `c.observe(name, x)` with every input x [tokens, in] (float32, detached) each module sees;
    `observe` runs with autocast off, so its statistics are float32 math whatever the passes'."""

    def __init__(self, modules: dict[str, "nn.Module"]):
        self.modules = modules
        self._hooks: list = []

    def observe(self, name: str, x: "torch.Tensor") -> None:
        raise NotImplementedError

    def __enter__(self):
        import torch

        def hook(name):
            def pre(module, args):
                # outside the passes' bf16 autocast: a Gram matrix or Hessian X^T X computed under
                # it is a bf16 matmul, whose rounding (~3 significant digits) leaves it indefinite
                with torch.autocast("cpu", enabled=False):
                    self.observe(name, args[0].detach().reshape(-1, args[0].shape[-1]).float())
            return pre
        self._hooks = [m.register_forward_pre_hook(hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


class HessianCollector(InputHooks):
    """`with HessianCollector(modules) as hc: run()` accumulates, for each module, the Hessian of a
    squared output error w.r.t. its weight, H = 2 X^T X / n over the module's inputs X [n, in]
    (float32, running mean as in the GPTQ reference, so any number of batches fits in memory)."""

    def __init__(self, modules: dict[str, "nn.Module"]):
        super().__init__(modules)
        self.H: dict[str, "torch.Tensor"] = {}
        self.n: dict[str, int] = {}

    def observe(self, name: str, x: "torch.Tensor") -> None:
        import torch

        n_old, n_new = self.n.get(name, 0), x.shape[0]
        total = n_old + n_new
        if name not in self.H:
            self.H[name] = torch.zeros(x.shape[1], x.shape[1])
        self.H[name] *= n_old / total
        x = x * (2 / total) ** 0.5
        self.H[name] += x.T @ x
        self.n[name] = total
