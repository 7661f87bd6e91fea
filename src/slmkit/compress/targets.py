"""Which modules a compression method touches: the linear projections of each decoder layer
(found through the architecture adapter table), minus a skip list."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slmkit.models.arch import get_arch

if TYPE_CHECKING:
    import torch
    from torch import nn

# lm_head and embeddings are not decoder-layer linears, so they are never targets here; methods
# that could touch them (e.g. GGUF export) say so explicitly.
DEFAULT_SKIP: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str          # full dotted name in the model: the adapter's layers path, index, role path
    layer: int         # decoder layer index
    role: str          # q, k, v, qkv, o, gate, up, gate_up, down
    module: "nn.Module"
    conv1d: bool = False  # gpt2's Conv1D stores the weight as [in, out]

    def weight(self) -> "torch.Tensor":
        """The weight as [out, in], whatever the module's own layout (a view, not a copy)."""
        w = self.module.weight.data
        return w.T if self.conv1d else w

    def set_weight(self, w: "torch.Tensor") -> None:
        """Overwrite the weight from an [out, in] tensor, keeping the module's dtype and layout."""
        import torch

        with torch.no_grad():
            self.module.weight.copy_((w.T if self.conv1d else w).to(self.module.weight.dtype))


def layer_targets(model: "nn.Module", index: int, skip: tuple[str, ...] = DEFAULT_SKIP) -> list[Target]:
    """Target linears of decoder layer `index`; `skip` holds roles or fnmatch patterns of names."""
    spec = get_arch(model)
    layer = spec.decoder_layers(model)[index]
    out = []
    for role, path in spec.linear_paths().items():
        name = f"{spec.layers}.{index}.{path}"
        if role in skip or any(fnmatch.fnmatch(name, pat) for pat in skip):
            continue
        out.append(Target(name, index, role, layer.get_submodule(path), spec.conv1d))
    return out


def all_targets(model: "nn.Module", skip: tuple[str, ...] = DEFAULT_SKIP) -> list[Target]:
    n = len(get_arch(model).decoder_layers(model))
    return [t for i in range(n) for t in layer_targets(model, i, skip)]
