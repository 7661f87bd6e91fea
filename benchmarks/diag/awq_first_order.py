"""What decides the loss change of quantizing one site? For chosen layers of the float model,
quantize one site's linears at a time (RTN, or AWQ's scale from the calibration Gram, linear
objective as apply_awq), measure each text's mean loss change dL, and split it into the first-order
term <dW, grad_W L_text> (the text's own gradient, one backward pass) and the rest (second order
and up: what an output-MSE objective such as AWQ's or GPTQ's models). Writes
results/awq_first_order{TAG}.json.

    python benchmarks/diag/awq_first_order.py MODEL LAYERS [SITES] [TAG]
    e.g. ... models/qwen2.5-coder-0.5b-instruct 1,12,17 attn_in,attn_out,mlp_in,mlp_out _qwen05b
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import model_arg, write_result  # noqa: E402

from slmkit.compress.quantize.awq import fake_quantize, search_scale  # noqa: E402
from slmkit.compress.smooth import ActivationStats, scale_groups  # noqa: E402
from slmkit.data import embedded_text  # noqa: E402
from slmkit.data.chunk import token_stream  # noqa: E402
from slmkit.generate.calibration import build_calibration
from slmkit.models import load  # noqa: E402

AUSTEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "austen_emma.txt"
BITS, GS = 4, 128

model, tok = load(model_arg(sys.argv[1]), "float32")
layers = [int(x) for x in sys.argv[2].split(",")]
wanted = sys.argv[3].split(",") if len(sys.argv) > 3 else ["attn_in", "attn_out", "mlp_in", "mlp_out"]
tag = sys.argv[4] if len(sys.argv) > 4 else ""
texts = {"pydoc": token_stream(tok, embedded_text("eval"))[:8 * 512].view(8, 512),
         "austen": torch.tensor(tok(AUSTEN.read_text()[:200000], add_special_tokens=False)["input_ids"]
                                )[:8 * 512].view(8, 512)}
calib = build_calibration(model, tok, "embedded", n=32, length=512, seed=0)
sites = {(i, g.site): g for i in layers for g in scale_groups(model, i)
         if g.prev is not None and g.site in wanted}
for p in model.parameters():
    p.requires_grad_(False)


def mean_loss(ids) -> float:
    with torch.no_grad():
        return sum(model(input_ids=b, labels=b).loss.item() * b.shape[0] for b in ids.split(4)) / ids.shape[0]


base, grads = {}, {}
weights = {t.name: t.module.weight for g in sites.values() for t in g.linears}
for name, ids in texts.items():                      # each text's gradient w.r.t. the site weights
    for w in weights.values():
        w.requires_grad_(True)
        w.grad = None
    total = 0.0
    for b in ids.split(4):
        loss = model(input_ids=b, labels=b).loss * b.shape[0] / ids.shape[0]
        loss.backward()
        total += loss.item()
    base[name] = total
    for key, w in weights.items():
        grads[name, key] = w.grad.detach().float().clone()
        w.requires_grad_(False)
        w.grad = None
with ActivationStats({key: g.linears[0].module for key, g in sites.items()}, gram=True) as st, torch.no_grad():
    for b in calib.split(8):
        model(input_ids=b)

rows = []
print(f"float loss: pydoc {base['pydoc']:.5f}, austen {base['austen']:.5f}")
print("layer site method r | text: dL = first-order + rest")
for key, g in sites.items():
    w = torch.cat([t.weight().float() for t in g.linears])
    s, r, _ = search_scale(st.stats[key].mean_abs, st.stats[key].gram, w, BITS, GS, False, 20,
                           tie=g.prev.tie)
    sizes = [t.weight().shape[0] for t in g.linears]
    originals = [t.weight().clone() for t in g.linears]
    for method, wq in (("rtn", fake_quantize(w, BITS, GS, False)),
                       ("awq", fake_quantize(w * s, BITS, GS, False) / s)):
        row = {"layer": key[0], "site": key[1], "method": method, "ratio": r if method == "awq" else 0.0}
        for t, part in zip(g.linears, wq.split(sizes)):
            t.set_weight(part)
        for name, ids in texts.items():
            dl = mean_loss(ids) - base[name]
            first = sum(float(((part - o.float()) * grads[name, t.name]).sum())
                        for t, part, o in zip(g.linears, wq.split(sizes), originals))
            row[name] = {"dL": dl, "first_order": first, "rest": dl - first}
        for t, o in zip(g.linears, originals):
            t.set_weight(o)
        rows.append(row)
        print(key[0], key[1], method, f"{row['ratio']:.2f} |",
              "  ".join(f"{n}: {row[n]['dL']:+.5f} = {row[n]['first_order']:+.5f} + {row[n]['rest']:+.5f}"
                        for n in texts), flush=True)
out = write_result(f"awq_first_order{tag}", {"model": sys.argv[1], "bits": BITS, "group_size": GS,
                                               "base_loss": base, "rows": rows})
print(f"wrote {out}")
