"""Does AWQ's modelled gain at a site hold on other text? For chosen layers of the float model:
collect each site's inputs on calibration rows, held-out pydoc and Austen (512 and 2048 tokens),
pick s on the calibration Gram (linear objective, as apply_awq), and report output-MSE ratios
(AWQ / RTN) on each text's Gram.

    python benchmarks/diag/awq_osite.py MODEL LAYERS [GROUP_SIZE]   e.g. ... 1,3,17,20,21 128
"""
import sys
from pathlib import Path

import torch

from slmkit.compress.quantize.awq import fake_quantize, output_mse, search_scale
from slmkit.compress.smooth import ActivationStats, scale_groups
from slmkit.data import embedded_text
from slmkit.data.chunk import token_stream
from slmkit.generate.calibration import build_calibration
from slmkit.models import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import model_arg  # noqa: E402

AUSTEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "austen_emma.txt"

model, tok = load(model_arg(sys.argv[1]), "float32")
layers = [int(x) for x in sys.argv[2].split(",")]
gs = int(sys.argv[3]) if len(sys.argv) > 3 else 128
pydoc = token_stream(tok, embedded_text("eval"))
austen = torch.tensor(tok(AUSTEN.read_text()[:400000], add_special_tokens=False)["input_ids"])


def rows(ids, n, length):
    return ids[:n * length].view(n, length)


sets = {"calib": build_calibration(model, tok, "embedded", n=32, length=512, seed=0),
        "pydoc512": rows(pydoc, 16, 512), "austen512": rows(austen, 16, 512),
        "pydoc2048": rows(pydoc, 4, 2048), "austen2048": rows(austen, 4, 2048)}
sites = {(i, g.site): g for i in layers for g in scale_groups(model, i) if g.prev is not None}


def stats(ids):
    with ActivationStats({key: g.linears[0].module for key, g in sites.items()}, gram=True) as st, \
            torch.no_grad():
        for batch in ids.split(4):
            model(input_ids=batch)
    return st.stats


S = {name: stats(ids) for name, ids in sets.items()}
print("layer site r | AWQ/RTN output MSE on: " + " ".join(sets))
for key, g in sites.items():
    w = torch.cat([t.weight().float() for t in g.linears])
    s, r, _ = search_scale(S["calib"][key].mean_abs, S["calib"][key].gram, w, 4, gs, False, 20,
                           tie=g.prev.tie)
    rtn = fake_quantize(w, 4, gs, False) - w
    awq = fake_quantize(w * s, 4, gs, False) / s - w
    ratios = [float(output_mse(awq, S[n][key].gram) / output_mse(rtn, S[n][key].gram)) for n in sets]
    print(*key, r, " ".join(f"{x:.3f}" for x in ratios), flush=True)
