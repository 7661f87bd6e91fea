"""Synthetic layer inputs shared by the quantization and pruning math tests."""

import torch


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def correlated_inputs(n=512, d=96, seed=0):
    """Inputs with strongly correlated features and a few outlier channels, like real activations."""
    g = gen(seed)
    z = torch.randn(n, d // 4, generator=g)
    x = z @ torch.randn(d // 4, d, generator=g) + 0.1 * torch.randn(n, d, generator=g)
    x[:, :3] *= 20
    return x
