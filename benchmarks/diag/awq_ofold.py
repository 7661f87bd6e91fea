"""Fold AWQ-like scales (mean|x|^0.5, tied under GQA) into every layer's o site (v rows / s,
o columns * s) of the float model and compare logits: the fold must be exact.

    python benchmarks/diag/awq_ofold.py MODEL
"""
import sys
from pathlib import Path

import torch

from slmkit.compress.smooth import ActivationStats, fold_scales, scale_groups, tie_channels
from slmkit.generate.calibration import build_calibration
from slmkit.models import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import model_arg  # noqa: E402

model, tok = load(model_arg(sys.argv[1]), "float32")
ids = build_calibration(model, tok, "embedded", n=2, length=256, seed=0)
o_sites = {i: next(g for g in scale_groups(model, i) if g.site == "attn_out")
           for i in range(model.config.num_hidden_layers)}
with ActivationStats({i: g.linears[0].module for i, g in o_sites.items()}) as st, torch.no_grad():
    ref = model(input_ids=ids).logits
for i, g in o_sites.items():
    s = tie_channels(st.stats[i].mean_abs, g.prev.tie).pow(0.5)
    fold_scales(g, s / (s.max() * s.min()).sqrt())
with torch.no_grad():
    out = model(input_ids=ids).logits
print("max |logit diff|", float((out - ref).abs().max()), "max |logit|", float(ref.abs().max()),
      "argmax agree", float((out.argmax(-1) == ref.argmax(-1)).float().mean()))
