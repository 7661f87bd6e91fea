"""Per output row of o_proj: AWQ-scaled vs RTN output error, against the residual stream's
per-channel magnitude (massive-activation dims).

    python benchmarks/diag/awq_orows.py MODEL LAYERS   e.g. ... 1,17,20,21
"""
import sys
from pathlib import Path

import torch

from slmkit.compress.quantize.awq import fake_quantize, row_output_errors, search_scale
from slmkit.compress.smooth import ActivationStats, scale_groups
from slmkit.generate.calibration import build_calibration
from slmkit.models import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import model_arg  # noqa: E402

model, tok = load(model_arg(sys.argv[1]), "float32")
layers = [int(x) for x in sys.argv[2].split(",")]
ids = build_calibration(model, tok, "embedded", n=8, length=512, seed=0)
o_sites = {i: next(g for g in scale_groups(model, i) if g.site == "attn_out") for i in layers}
with ActivationStats({i: g.linears[0].module for i, g in o_sites.items()}, gram=True) as st, torch.no_grad():
    out = model(input_ids=ids, output_hidden_states=True)
for i, g in o_sites.items():
    gram, mean = st.stats[i].gram, st.stats[i].mean_abs
    w = g.linears[0].weight().float()
    s, r, _ = search_scale(mean, gram, w, 4, 128, False, 20, tie=g.prev.tie)
    e_rtn = row_output_errors(fake_quantize(w, 4, 128, False) - w, gram)
    e_awq = row_output_errors(fake_quantize(w * s, 4, 128, False) / s - w, gram)
    mag = out.hidden_states[i].float().abs().flatten(0, -2).mean(0)   # the residual entering layer i
    top = mag.topk(5).indices
    ratio = e_awq / e_rtn
    print(f"layer {i} r {r}: mean ratio {float(e_awq.mean() / e_rtn.mean()):.3f}; rows worse: "
          f"{int((ratio > 1).sum())}/{len(ratio)}; max row ratio {float(ratio.max()):.2f} at row {int(ratio.argmax())}")
    print("   massive residual dims", top.tolist(), "mean|h|", [round(float(mag[j]), 1) for j in top],
          "median", round(float(mag.median()), 3))
    print("   their o-row error ratio", [round(float(ratio[j]), 2) for j in top],
          "rtn err", [f"{float(e_rtn[j]):.2e}" for j in top], "median rtn err", f"{float(e_rtn.median()):.2e}")
    print("   s range", round(float(s.min()), 3), round(float(s.max()), 2))
