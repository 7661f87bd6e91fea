"""Do the loss gradients of different texts point the same way at a site's weights? For chosen
layers of the float model: each text's gradient w.r.t. every decoder linear's weight (one backward
pass per text), their cosines, and RTN's first-order term <dW, grad> on each text. Texts: two
pydoc calibration draws (seeds 0 and 1, 16 x 512 each), held-out pydoc and two Austen passages (8 x 512).

    python benchmarks/diag/grad_cosine.py MODEL LAYERS   e.g. ... 1,12,17
"""
import sys
from pathlib import Path

import torch

from slmkit.compress.quantize.awq import fake_quantize
from slmkit.compress.smooth import scale_groups
from slmkit.data import embedded_text
from slmkit.data.chunk import token_stream
from slmkit.generate.calibration import build_calibration
from slmkit.models import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import model_arg  # noqa: E402

AUSTEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "austen_emma.txt"
model, tok = load(model_arg(sys.argv[1]), "float32")
layers = [int(x) for x in sys.argv[2].split(",")]
texts = {"calib": build_calibration(model, tok, "embedded", n=16, length=512, seed=0),
         "calib2": build_calibration(model, tok, "embedded", n=16, length=512, seed=1),
         "pydoc": token_stream(tok, embedded_text("eval"))[:8 * 512].view(8, 512),
         "austen": torch.tensor(tok(AUSTEN.read_text()[:200000], add_special_tokens=False)["input_ids"])[:8 * 512].view(8, 512),
         "austen2": torch.tensor(tok(AUSTEN.read_text()[200000:400000], add_special_tokens=False)["input_ids"])[:8 * 512].view(8, 512)}
for p in model.parameters(): p.requires_grad_(False)
targets = {(i, t.role): t for i in layers for g in scale_groups(model, i) for t in g.linears}
for t in targets.values(): t.module.weight.requires_grad_(True)
G = {}
for name, ids in texts.items():
    for t in targets.values(): t.module.weight.grad = None
    for b in ids.split(4):
        (model(input_ids=b, labels=b).loss * b.shape[0] / ids.shape[0]).backward()
    for k, t in targets.items(): G[name, k] = t.module.weight.grad.detach().clone()
    print("grad", name, flush=True)
cos = lambda a, b: float((a * b).sum() / (a.norm() * b.norm()))
pairs = [("calib", "calib2"), ("calib", "pydoc"), ("calib", "austen"), ("pydoc", "austen"), ("austen", "austen2")]
print("layer role | cos " + " ".join(f"{a}-{b}" for a, b in pairs) + " | RTN's first-order term on each text")
for k, t in targets.items():
    w = t.weight().float()
    dw = fake_quantize(w, 4, 128, False) - w
    f = {n: float((dw * G[n, k]).sum()) for n in texts}
    print(*k, "|", " ".join(f"{cos(G[a, k], G[b, k]):+.3f}" for a, b in pairs), "| first-order", " ".join(f"{n} {f[n]:+.5f}" for n in texts), flush=True)
