"""Shared fixtures-as-functions of the AWQ and SmoothQuant tests: calibration/evaluation ids and
tiny models with activation outlier channels (what those methods exist for)."""

import torch

from slmkit.compress.smooth import ATTN_IN, MLP_IN, absorb, scale_groups
from slmkit.models import get_arch

G = torch.Generator().manual_seed(0)
CALIB = torch.randint(3, 500, (8, 64), generator=G)
EVAL = torch.randint(3, 500, (4, 64), generator=G)
OUTLIERS = [3, 17, 40]  # input channels made 30x larger in the outlier models


def n_layers(model):
    return len(get_arch(model).decoder_layers(model))


def with_outliers(model, factor=30.0):
    """Make a few channels of every norm-fed activation `factor` times larger (a different model:
    the reference for errors is this model in float)."""
    for i in range(n_layers(model)):
        for g in scale_groups(model, i):
            if g.site in (ATTN_IN, MLP_IN):
                s = torch.ones(g.in_features)
                s[OUTLIERS] = 1 / factor
                absorb(g.prev, s)
    return model


def logits(model, ids=EVAL):
    with torch.no_grad():
        return model(ids).logits
