"""Per output row of o_proj: AWQ-scaled vs RTN output error, against the residual stream's
per-channel magnitude (massive-activation dims)."""
import importlib, sys, torch
A = importlib.import_module("slmkit.compress.quantize.awq")
from slmkit.models import load
from slmkit.data import build_calibration
from slmkit.compress.smooth import scale_groups
model, tok = load(sys.argv[1], "float32")
layers = [int(x) for x in sys.argv[2].split(",")]
ids = build_calibration(model, tok, "embedded", n=8, length=512, seed=0)
acc, hooks = {}, []
for i in layers:
    g = [x for x in scale_groups(model, i) if x.site == "attn_out"][0]
    def f(m, inp, i=i):
        x = inp[0].detach().float().flatten(0, -2)
        acc[i] = (x.T @ x / x.shape[0], x.abs().mean(0))
    hooks.append(g.linears[0].module.register_forward_pre_hook(f))
with torch.no_grad():
    out = model(input_ids=ids, output_hidden_states=True)
for i in layers:
    gram, mean = acc[i]
    g = [x for x in scale_groups(model, i) if x.site == "attn_out"][0]
    w = g.linears[0].weight().float()
    s, r, _ = A.search_scale(mean, gram, w, 4, 128, False, 20, False, tie=g.prev.tie)
    e_rtn = A.row_output_errors(A.fake_quantize(w, 4, 128, False) - w, gram)
    e_awq = A.row_output_errors(A.fake_quantize(w * s, 4, 128, False) / s - w, gram)
    resid = out.hidden_states[i].float().abs().flatten(0, -2)            # input residual of layer i
    mag = resid.mean(0)
    top = mag.topk(5).indices
    ratio = e_awq / e_rtn
    print(f"layer {i} r {r}: mean ratio {float(e_awq.mean() / e_rtn.mean()):.3f}; rows worse: {int((ratio > 1).sum())}/{len(ratio)}; "
          f"max row ratio {float(ratio.max()):.2f} at row {int(ratio.argmax())}")
    print("   massive residual dims", top.tolist(), "mean|h|", [round(float(mag[j]), 1) for j in top],
          "median", round(float(mag.median()), 3))
    print("   their o-row error ratio", [round(float(ratio[j]), 2) for j in top],
          "rtn err", [f"{float(e_rtn[j]):.2e}" for j in top], "median rtn err", f"{float(e_rtn.median()):.2e}")
    print("   s range", round(float(s.min()), 3), round(float(s.max()), 2))
