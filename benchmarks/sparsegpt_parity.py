"""SparseGPT, matrix by matrix: slmkit's `sparsegpt` and llm-compressor's `sparsify_weight` (its
own venv, by subprocess) on the very same weights and Hessians, so a difference between the two
tools' end-to-end perplexities can be told apart from a difference in the algorithm.

Hessians are real: H = 2 X^T X / n of the dense model's inputs to a few linears on calibration
text (the dense model's, not the partly pruned model's inputs; the algorithm sees just (W, H)).
slmkit runs with the peer's mask choice (`scope="block"`, block-wide masks) and the same damp.

    python benchmarks/sparsegpt_parity.py [--model default] [--patterns 0.5,2:4] [--damp 0.01]
        [--layers 0,10,20,-1] [--roles q,o,up,down] [--calib-n 16] [--tag _smollm2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import PEER_PY, ROOT, model_arg, write_result  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="default")
    ap.add_argument("--patterns", default="0.5,2:4")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--layers", default="0,10,20,-1", help="decoder layer indices (negative: from the end)")
    ap.add_argument("--roles", default="q,o,up,down")
    ap.add_argument("--calib", default="embedded")
    ap.add_argument("--calib-n", type=int, default=16)
    ap.add_argument("--tag", default="")
    return ap.parse_args()


def hessians(model, tok, args) -> dict:
    import torch

    from slmkit.compress.calibrate import HessianCollector
    from slmkit.compress.targets import layer_targets
    from slmkit.generate.calibration import build_calibration
    from slmkit.models.arch import get_arch

    n_layers = len(get_arch(model).decoder_layers(model))
    roles = args.roles.split(",")
    targets = {t.name: t for i in args.layers.split(",")
               for t in layer_targets(model, int(i) % n_layers, ()) if t.role in roles}
    if not targets:
        raise SystemExit(f"no linears with roles {roles} in layers {args.layers}")
    calib = build_calibration(model, tok, args.calib, n=args.calib_n, length=512, seed=0)
    with HessianCollector({n: t.module for n, t in targets.items()}) as hc, torch.no_grad():
        for ids in calib.split(4):
            model(input_ids=ids, use_cache=False)
    return {n: {"W": t.weight().detach().float().clone(), "H": hc.H[n], "label": f"layer {t.layer} {t.role}"}
            for n, t in targets.items()}


def main() -> int:
    args = parse_args()
    import torch
    from rich.console import Console
    from rich.table import Table

    from slmkit.compress.prune.nm import nm_sparsity, parse_nm
    from slmkit.compress.prune.sparsegpt import sparsegpt
    from slmkit.models import load

    if not PEER_PY.exists():
        raise SystemExit(f"peer venv missing: run benchmarks/peers/setup.sh llmc ({PEER_PY})")
    model, tok = load(args.model, "float32")
    cases = hessians(model, tok, args)
    work = Path(tempfile.mkdtemp(prefix="slmkit-sgpt-parity-"))
    rows = []
    for pattern in args.patterns.split(","):
        nm = parse_nm(pattern) if ":" in pattern else None
        sparsity = nm_sparsity(*nm) if nm else float(pattern)
        spec = {"cases": cases, "sparsity": sparsity, "nm": list(nm) if nm else None,
                "block_size": args.block_size, "damp": args.damp}
        torch.save(spec, work / "in.pt")
        subprocess.run([str(PEER_PY), str(ROOT / "benchmarks" / "peers" / "llmc_sparsegpt_matrix.py"),
                        str(work / "in.pt"), str(work / "out.pt")], check=True)
        peer = torch.load(work / "out.pt")
        for name, case in cases.items():
            ours = sparsegpt(case["W"], case["H"].clone(), sparsity, nm, args.block_size, args.damp,
                             scope="block")
            theirs = peer[name].detach().float()

            def loss(w):  # the layer's output error on the calibration inputs, tr(dW H dW^T) / 2
                dw = w - case["W"]
                return float(((dw @ case["H"]) * dw).sum() / 2)
            rows.append({"pattern": pattern, "linear": name, "label": case["label"],
                         "mask_agreement": float(((ours == 0) == (theirs == 0)).float().mean()),
                         "max_abs_diff": float((ours - theirs).abs().max()),
                         "zeros_ours": int((ours == 0).sum()), "zeros_peer": int((theirs == 0).sum()),
                         "loss_ours": loss(ours), "loss_peer": loss(theirs)})

    table = Table(title=f"SparseGPT on identical (W, H): slmkit vs llm-compressor, damp {args.damp}, "
                        f"block {args.block_size}, block-wide masks")
    for col in ("pattern", "linear", "mask agreement", "max |dW|", "zeros ours", "zeros peer",
                "loss ours / peer"):
        table.add_column(col, justify="left" if col in ("pattern", "linear") else "right")
    for r in rows:
        table.add_row(r["pattern"], r["label"], f"{r['mask_agreement']:.6f}", f"{r['max_abs_diff']:.2e}",
                      str(r["zeros_ours"]), str(r["zeros_peer"]), f"{r['loss_ours'] / r['loss_peer']:.6f}")
    Console().print(table)
    print("wrote", write_result("sparsegpt_parity" + args.tag, {"args": vars(args), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
