"""Does AWQ's modeled gain at a site hold on other text? For chosen layers of the float model:
collect each site's inputs on calibration rows, held-out pydoc and Austen (512 and 2048 tokens),
pick s on the calibration Gram (linear objective, as apply_awq), and report output-MSE ratios
(AWQ / RTN) on each text's Gram."""
import importlib, sys
import torch
A = importlib.import_module("slmkit.compress.quantize.awq")
from slmkit.models import load
from slmkit.data import build_calibration, embedded_text
from slmkit.data.chunk import chunk, token_stream
from slmkit.compress.smooth import scale_groups
from pathlib import Path
model, tok = load(sys.argv[1], "float32")
layers = [int(x) for x in sys.argv[2].split(",")]
gs = int(sys.argv[3]) if len(sys.argv) > 3 else 128
calib = build_calibration(model, tok, "embedded", n=32, length=512, seed=0)
ev = token_stream(tok, embedded_text("eval"))
au_ids = tok((Path(__file__).resolve().parents[3] / "shared" / "data" / "austen_emma.txt").read_text()[:400000], add_special_tokens=False)["input_ids"]
def rows(ids, n, L):
    return torch.tensor(ids[:n * L]).view(n, L)
ev_ids = ev.flatten().tolist() if hasattr(ev, "flatten") else list(ev)
sets = {"calib": calib, "pydoc512": rows(ev_ids, 16, 512), "austen512": rows(au_ids, 16, 512),
        "pydoc2048": rows(ev_ids, 4, 2048), "austen2048": rows(au_ids, 4, 2048)}
groups = {i: scale_groups(model, i) for i in layers}
def grams(ids):
    acc = {}
    hooks = []
    for i in layers:
        for g in groups[i]:
            if g.prev is None: continue
            def f(mod, inp, key=(i, g.site)):
                x = inp[0].detach().float().flatten(0, -2)
                s = acc.setdefault(key, [0, 0, 0])
                s[0] = s[0] + x.T @ x; s[1] = s[1] + x.abs().sum(0); s[2] += x.shape[0]
            hooks.append(g.linears[0].module.register_forward_pre_hook(f))
    with torch.no_grad():
        for b in ids.split(4):
            model(input_ids=b)
    for h in hooks: h.remove()
    return {k: (v[0] / v[2], v[1] / v[2]) for k, v in acc.items()}
G = {name: grams(ids) for name, ids in sets.items()}
print("layer site r | AWQ/RTN output MSE on: " + " ".join(sets))
for (i, site), (gram, mean) in G["calib"].items():
    g = [x for x in groups[i] if x.site == site][0]
    w = torch.cat([t.weight().float() for t in g.linears])
    s, r, _ = A.search_scale(mean, gram, w, 4, gs, False, 20, False, tie=g.prev.tie)
    rtn = A.fake_quantize(w, 4, gs, False) - w
    awq = A.fake_quantize(w * s, 4, gs, False) / s - w
    ratios = [float(A.output_mse(awq, G[n][(i, site)][0]) / A.output_mse(rtn, G[n][(i, site)][0])) for n in sets]
    print(i, site, r, " ".join(f"{x:.3f}" for x in ratios), flush=True)
