"""An off-grid copy of a model dequantized from a GGUF: every weight matrix whose 32-weight blocks
lie on a Q4_1 grid (as the shared SmolLM2's linears do) gets Gaussian noise of half its block's
Q4_1 step (standard deviation (max - min) / 15 / 2, one draw per weight, a fixed seed), and one on
a Q8_0 grid (its embedding table) half its Q8_0 step (max |w| / 127 / 2), so no quantizer can win
by recovering the grid the source came from. Saved as a standard checkpoint in the source's
dtype; prints, per tensor kind, how many matrices were on the grid and noised.

    python benchmarks/offgrid_source.py --model models/smollm2-135m-instruct --out models/smollm2-135m-noised
    python benchmarks/offgrid_source.py --rotate --model models/smollm2-135m-instruct --out models/smollm2-135m-rotated

`--rotate` instead multiplies the residual stream by a random orthogonal matrix Q (llama-style
models: RMSNorm, no biases into the residual): each RMSNorm weight is folded into the linears that
read it (the norms become 1), the embeddings, q/k/v/gate/up inputs and the head are rotated by Q,
o and down outputs by Q^T. The outputs are the source's up to float error (checked on a few
tokens before saving), every weight lies off any grid, and the head is untied from the embeddings
(they differ by the final norm), so files carry one more vocabulary-sized table.

Its perplexity is measured beside the source's by `gguf_compare.py` (the "source bf16" row of a
run on each).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg  # noqa: E402

BLOCK = 32


def grid_step(w: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """(grid, each weight's block step [same shape]) when `w` [rows, cols] lies on a Q4_1 grid
    (step (max - min) / 15) or a Q8_0 grid (step max |w| / 127): at least 80% of weights within a
    tenth of a step of a level (a random matrix has ~20%; bf16 rounding moves some Q8_0 values
    off their levels); else None."""
    if w.ndim != 2 or w.shape[1] % BLOCK:
        return None
    b = w.float().reshape(w.shape[0], -1, BLOCK)
    lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    for name, origin, step in [("Q4_1", lo, (hi - lo) / 15), ("Q8_0", 0, b.abs().amax(-1, keepdim=True) / 127)]:
        step = step.clamp(min=1e-12)
        frac = (b - origin) / step
        if ((frac - frac.round()).abs() < 0.1).float().mean() >= 0.8:
            return name, step.expand_as(b).reshape(w.shape)
    return None


def rotate(model, seed: int) -> float:
    """Rotate `model`'s residual stream in place (see the module docstring); -> the largest logit
    change on a short probe, in float64."""
    from slmkit.models.arch import get_arch

    spec = get_arch(model)
    ids = torch.arange(3, 40)[None]
    model.double()
    with torch.no_grad():
        before = model(ids).logits
        d = model.config.hidden_size
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        head, emb = spec.head(model), spec.embedding(model)
        head.weight = torch.nn.Parameter(head.weight.detach().clone())         # untie
        model.config.tie_word_embeddings = False
        emb.weight.copy_(emb.weight @ q)

        def fold_in(norm, linears):
            for lin in linears:
                lin.weight.copy_((lin.weight * norm.weight[None, :]) @ q)
            norm.weight.fill_(1.0)

        for layer in spec.decoder_layers(model):
            lin, norms = spec.linears(layer), spec.layer_norms(layer)
            fold_in(norms[spec.attn_in_norm], [lin[r] for r in ("q", "k", "v")])
            fold_in(norms[spec.mlp_in_norm], [lin[r] for r in ("gate", "up")])
            for r in ("o", "down"):
                if lin[r].bias is not None:
                    raise SystemExit(f"{r} has a bias: rotating its output is not supported here")
                lin[r].weight.copy_(q.T @ lin[r].weight)
        fold_in(spec.norm(model), [head])
        after = model(ids).logits
    return float((after - before).abs().max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="models/smollm2-135m-instruct")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rotate", action="store_true", help="rotate the residual stream instead of adding noise")
    args = ap.parse_args()
    from slmkit.models import load, save

    if args.rotate:
        model, tok = load(args.model, "float32")
        change = rotate(model, args.seed)
        print(f"largest logit change after the rotation (float64): {change:.2e}")
        if change > 1e-3:   # HF RMSNorm computes in float32 even for a float64 model
            raise SystemExit("the rotation changed the outputs: not written")
        model.to(torch.bfloat16)
        save(model, tok, args.out, {"note": f"{args.model} with its residual stream rotated by a random "
                                            f"orthogonal matrix (seed {args.seed}), norms folded, head untied; "
                                            "benchmarks/offgrid_source.py --rotate"})
        print(f"wrote {args.out}")
        return 0
    model, tok = load(args.model, "bfloat16")
    gen = torch.Generator().manual_seed(args.seed)
    noised: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            kind = name.split(".")[-2] if name.startswith("model.layers.") else name
            found = grid_step(p)
            counts = noised.setdefault(kind, {})
            grid = found[0] if found else "no grid (left as it is)"
            counts[grid] = counts.get(grid, 0) + 1
            if found:
                p.copy_((p.float() + torch.randn(p.shape, generator=gen) * found[1] / 2).to(p.dtype))
    for kind, counts in noised.items():
        print(f"{kind:40} " + ", ".join(f"{n} on {g}" for g, n in counts.items()))
    save(model, tok, args.out, {"note": f"{args.model} with Gaussian noise of half the Q4_1 step "
                                        f"(or Q8_0 step) added to every on-grid weight matrix (seed {args.seed}); "
                                        "benchmarks/offgrid_source.py"})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
