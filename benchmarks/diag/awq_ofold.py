"""Fold AWQ-like scales into every layer's o site (v rows / s, o columns * s) of the float model
and compare logits: the fold must be exact."""
import sys, torch
from slmkit.models import load
from slmkit.data import build_calibration
from slmkit.compress.smooth import scale_groups, fold_scales, tie_channels
model, tok = load(sys.argv[1], "float32")
ids = build_calibration(model, tok, "embedded", n=2, length=256, seed=0)
acc = {}
hooks = []
for i in range(model.config.num_hidden_layers):
    g = [x for x in scale_groups(model, i) if x.site == "attn_out"][0]
    hooks.append(g.linears[0].module.register_forward_pre_hook(
        lambda m, inp, i=i: acc.__setitem__(i, inp[0].abs().flatten(0, -2).mean(0))))
with torch.no_grad():
    ref = model(input_ids=ids).logits
for h in hooks: h.remove()
for i in range(model.config.num_hidden_layers):
    g = [x for x in scale_groups(model, i) if x.site == "attn_out"][0]
    s = tie_channels(acc[i].float(), g.prev.tie).pow(0.5)
    s = s / (s.max() * s.min()).sqrt()
    fold_scales(g, s)
with torch.no_grad():
    out = model(input_ids=ids).logits
print("max |logit diff|", float((out - ref).abs().max()), "max |logit|", float(ref.abs().max()),
      "argmax agree", float((out.argmax(-1) == ref.argmax(-1)).float().mean()))
