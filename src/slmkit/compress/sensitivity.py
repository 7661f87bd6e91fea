"""How much each linear's output and weight matter to the model's loss, from the float model's
gradients on calibration sequences (L: the next-token cross-entropy):

- a diagonal Fisher estimate, E[(dL/dy_c)^2] over tokens for output channel c of a linear
  y = x W^T (the empirical Fisher, as SqueezeLLM uses). Weighting each output channel's error by
  it turns an output MSE into a second-order estimate of the loss increase,
  (y_hat - y)^T diag(F) (y_hat - y) / 2, with the separable approximation
  E_t[g_tc^2 e_tc^2] ~ E_t[g_tc^2] E_t[e_tc^2];
- with `weight_grads`, the gradient of the mean token loss with respect to each linear's weight,
  which gives the first-order term <dW, dL/dW> (zero in expectation only where the model has
  converged on the text).

`loss_sensitivity` runs one forward and backward pass of the model per calibration sequence;
only the target weights (with `weight_grads`) and the target linears' outputs take gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from slmkit.errors import SlmkitError
from slmkit.progress import progress_bar

if TYPE_CHECKING:
    import torch

    from slmkit.compress.targets import Target


@dataclass
class Sensitivity:
    fisher: dict[str, "torch.Tensor"]   # per target name, E[(dL/dy)^2] [out] over calibration tokens
    grads: dict[str, "torch.Tensor"]    # per target name, d(mean token loss)/dW [out, in] (float32),
    #                                     empty unless asked for


def loss_sensitivity(model, calib: "torch.Tensor", targets: list["Target"], *,
                     weight_grads: bool = False) -> Sensitivity:
    """Per target name, the Fisher weights E[(dL/dy)^2] [out] over the tokens of `calib` [n, length]
    (float32; L the summed next-token cross-entropy of each sequence, the passes in the model's own
    dtype) and, with `weight_grads`, each target's weight gradient of the mean next-token loss (as
    [out, in], whatever the module's layout; one float32 tensor the size of each weight). The
    model is left as it was."""
    import torch
    import torch.nn.functional as F

    if calib.ndim != 2 or calib.shape[0] < 1 or calib.shape[1] < 2:
        raise SlmkitError(f"Fisher weights need calibration ids [n >= 1, length >= 2], got {tuple(calib.shape)}")
    sums = {t.name: torch.zeros(t.weight().shape[0]) for t in targets}
    tokens = 0
    hooks = []

    def keep_grad(name):
        def accumulate(g):                     # returns None: the gradient itself flows on unchanged
            sums[name].add_(g.detach().float().pow(2).reshape(-1, g.shape[-1]).sum(0))

        def hook(module, args, out):
            out.register_hook(accumulate)
        return hook

    embeddings = model.get_input_embeddings()
    hooks.append(embeddings.register_forward_hook(lambda m, a, out: out.detach().requires_grad_()))
    hooks += [t.module.register_forward_hook(keep_grad(t.name)) for t in targets]
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    old_grads = [p.grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        if weight_grads:
            for t in targets:
                t.module.weight.requires_grad_(True)
        with torch.enable_grad(), progress_bar("Loss sensitivity", calib.shape[0], unit="rows") as advance:
            for row in calib.split(1):
                logits = model(input_ids=row, use_cache=False).logits[0, :-1].float()
                F.cross_entropy(logits, row[0, 1:], reduction="sum").backward()
                tokens += row.shape[1]
                advance(1)
        predicted = calib.shape[0] * (calib.shape[1] - 1)
        grads = {}
        if weight_grads:
            for t in targets:
                g = t.module.weight.grad.float() / predicted
                grads[t.name] = g.T.contiguous() if t.conv1d else g
    finally:
        for h in hooks:
            h.remove()
        for p, flag, old in zip(params, flags, old_grads):
            p.requires_grad_(flag)
            p.grad = old
        model.train(was_training)
    return Sensitivity({name: s / tokens for name, s in sums.items()}, grads)
