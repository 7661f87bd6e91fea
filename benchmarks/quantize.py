"""Quantization acceptance: perplexity increase over the unquantized model in domain (embedded eval
text) and out of domain (Austen's Emma), protocol (i); calibration sources compared; the peer
(llm-compressor, own venv, by subprocess) on the same calibration ids; checkpoint size.

Accuracy is measured on the exact dequantized weights in float32 (quantize(..., pack_weights=False)
for ours, transformers' dense decompression for the peer's checkpoint), so the two tools are
compared on their grids alone; the int4 kernel's own ppl (bf16 activations) is reported beside.

    python benchmarks/quantize.py [--model default] [--bits 4] [--group-size 64]
        [--methods rtn,gptq,awq] [--calib "embedded;self;embedded@0.5,self@0.5"]
        [--calib-methods gptq] [--peer [--peer-methods gptq,awq]] [--size] [--tag _smollm2]

Speed is benchmarks/quantize_speed.py.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import RESULTS, eval_texts, model_arg, ppl_function, run_llmc, timed, write_result  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="default")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--symmetric", action="store_true", help="symmetric grids (the peer's W4A16)")
    ap.add_argument("--methods", default="rtn,gptq,awq")
    ap.add_argument("--calib", default="embedded", help="';'-separated calibration specs; the "
                    "first one calibrates every method, the rest only --calib-methods")
    ap.add_argument("--calib-methods", default="gptq")
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--eval-tokens", type=int, default=51200,
                    help="evaluate on this many leading tokens of each text (0 = all)")
    ap.add_argument("--gptq-damp", type=float, default=0.1)
    ap.add_argument("--gptq-act-order", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--gptq-clip-search", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--calib-dtype", choices=("float32", "bfloat16", "auto"), default="float32",
                    help="precision of GPTQ's and AWQ's calibration passes")
    ap.add_argument("--peer", action="store_true", help="run llm-compressor too (--peer-methods)")
    ap.add_argument("--peer-methods", default="gptq",
                    help="comma list of llm-compressor recipes with --peer: gptq (GPTQModifier), "
                         "awq (AWQModifier + QuantizationModifier)")
    ap.add_argument("--kernel-ppl", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure GPTQ's ppl through the packed int4 kernel")
    ap.add_argument("--size", action="store_true", help="on-disk size of the packed GPTQ checkpoint")
    ap.add_argument("--tag", default="", help="suffix for the result file name")
    args = ap.parse_args()
    bad = [m for m in args.peer_methods.split(",") if m and m not in PEER_METHODS]
    if bad:  # refused now, not after hours of our own rows
        ap.error(f"--peer-methods: unknown {', '.join(bad)}; choose from {', '.join(PEER_METHODS)}")
    return args


PEER_METHODS = ("gptq", "awq")  # what peer_args knows how to configure


def configs(args):
    from slmkit.compress.quantize.awq import AWQConfig
    from slmkit.compress.quantize.config import GPTQConfig, RTNConfig

    common = dict(bits=args.bits, group_size=args.group_size, symmetric=args.symmetric)
    calibrated = dict(common, calib_dtype=args.calib_dtype)
    gptq = dict(calibrated, damp=args.gptq_damp, act_order=args.gptq_act_order,
                static_groups=args.gptq_act_order)
    return {"rtn": RTNConfig(**common),
            "gptq": GPTQConfig(**gptq, clip_search=args.gptq_clip_search),
            "gptq-noclip": GPTQConfig(**gptq, clip_search=False),  # ablation: plain min/max grids
            # the default with bf16 calibration passes (float32 statistics), whatever --calib-dtype says
            "gptq-bf16": GPTQConfig(**{**gptq, "calib_dtype": "bfloat16"}, clip_search=args.gptq_clip_search),
            # per row, the better of the clip-searched and the plain-grid runs
            # the clip search weighted by diag H alone (default before session 17), or all columns equal
            "gptq-floor0": GPTQConfig(**gptq, clip_search=True, clip_floor=0.0),
            "gptq-uniform": GPTQConfig(**gptq, clip_search=True, clip_floor=1e9),
            "awq": AWQConfig(**calibrated),  # the default: the predicted-loss scale objective
            # the output-MSE scale objective: no gradient pass, for models whose gradient does not fit
            "awq-linear": AWQConfig(**calibrated, scale_objective="linear")}


def peer_args(args, method: str) -> list[str]:
    extra = ["--bits", str(args.bits), "--group-size", str(args.group_size)]
    if method == "gptq":
        extra += ["--dampening", str(args.gptq_damp)]
    if method == "gptq" and args.gptq_act_order:
        extra += ["--actorder", "static"]
    if args.symmetric:
        extra += ["--sym"]
    return extra


def main() -> int:
    args = parse_args()
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from transformers import AutoModelForCausalLM

    from slmkit.compress.api import quantize
    from slmkit.eval.memory import PeakRSS
    from slmkit.generate.calibration import build_calibration_with_provenance
    from slmkit.models import load, save

    base, tok = load(args.model, "float32")
    texts = eval_texts(tok, args.eval_tokens)
    ppls = ppl_function(tok, texts, args.window)

    specs = [s for s in args.calib.split(";") if s]
    calibs = {}
    for spec in specs:
        calibs[spec] = build_calibration_with_provenance(base, tok, spec, n=args.calib_n,
                                                         length=args.calib_len, seed=0)
    rows = {"baseline (fp32)": {"ppl": ppls(base)}}

    def checkpoint():  # partial results survive a crash or an interrupt later in the run
        write_result("quantize" + args.tag + ".partial", {"args": vars(args), "rows": rows})

    t: dict[str, float] = {}
    packed_gptq = None
    for name, cfg in configs(args).items():
        if name not in args.methods.split(","):
            continue
        for i, spec in enumerate(specs):
            if i > 0 and name not in args.calib_methods.split(","):
                continue
            if name == "rtn" and i > 0:
                continue
            label = name if name == "rtn" else f"{name} [{spec}]"
            model = copy.deepcopy(base)
            with PeakRSS() as mem, timed(t, label):
                quantize(model, copy.deepcopy(cfg), None if name == "rtn" else calibs[spec][0],
                         pack_weights=False)
            rows[label] = {"ppl": ppls(model), "seconds": t[label], "peak_rss_mb": mem.peak_bytes / 2**20}
            print(label, rows[label], flush=True)
            if "sites" in model._slmkit_steps[-1]:  # AWQ: the scale search's choice at each site
                rows[label]["sites"] = model._slmkit_steps[-1]["sites"]
            checkpoint()
            if name == "gptq" and i == 0:
                packed_gptq = model
            else:
                del model

    work = Path(tempfile.mkdtemp(prefix="slmkit-qbench-"))
    if args.peer:
        src = save(base.to(torch.bfloat16), tok, work / "base") if args.model == "default" else Path(args.model)
        base.float()
        from transformers import CompressedTensorsConfig

        for method in [m for m in args.peer_methods.split(",") if m]:
            out, info = run_llmc(method, src, calibs[specs[0]][0], work, peer_args(args, method))
            # dequantize=True: decompress to dense float (compressed-tensors 0.20 cannot set up
            # an asymmetric packed layout for loading; dense is also what our rows measure)
            peer = AutoModelForCausalLM.from_pretrained(
                out, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True))
            label = f"llm-compressor {method} [{specs[0]}]"
            rows[label] = {"ppl": ppls(peer), "seconds": info["compress_s"],
                           "peak_rss_mb": info["peak_rss_mb"], "peer": info}
            print(label, rows[label]["ppl"], flush=True)
            checkpoint()
            del peer

    extra = {}
    if packed_gptq is not None and (args.kernel_ppl or args.size):
        from slmkit.compress.api import pack

        store = packed_gptq._slmkit_quantized
        del packed_gptq._slmkit_quantized
        pack(packed_gptq, store)
        if args.kernel_ppl:
            rows["gptq, packed int4 kernels"] = {"ppl": ppls(packed_gptq)}
        if args.size:
            extra["size"] = checkpoint_sizes(base, packed_gptq, tok, work)

    table = Table(title=f"{args.model}: W{args.bits} g{args.group_size} "
                        f"{'sym' if args.symmetric else 'asym'}, calib {args.calib_n}x{args.calib_len}, "
                        f"ppl protocol (i) window {args.window}")
    for c in ("method [calibration]", "ppl in-domain", "ratio", "ppl Austen", "ratio", "seconds", "peak RSS MB"):
        table.add_column(c, justify="left" if c.startswith("method") else "right")
    b = rows["baseline (fp32)"]["ppl"]
    for label, r in rows.items():
        table.add_row(escape(label), f"{r['ppl']['in']:.3f}", f"{r['ppl']['in'] / b['in']:.3f}x",
                      f"{r['ppl']['out']:.3f}", f"{r['ppl']['out'] / b['out']:.3f}x",
                      f"{r['seconds']:.1f}" if "seconds" in r else "-",
                      f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-")
    Console(width=160).print(table)
    if extra.get("size"):
        print("size:", extra["size"])
    payload = {"args": vars(args), "rows": rows, "texts": {k: v.describe() for k, v in texts.items()},
               "calibration": {s: c[1] for s, c in calibs.items()}, **extra}
    print(f"wrote {write_result('quantize' + args.tag, payload)}")
    (RESULTS / f"quantize{args.tag}.partial.json").unlink(missing_ok=True)  # superseded
    return 0


def checkpoint_sizes(base, packed, tok, work: Path) -> dict:
    """Bytes of the quantized linears on disk vs the same linears in bf16 (embeddings and
    lm_head excluded), and the whole weight files."""
    import torch
    from safetensors import safe_open

    from slmkit.compress.targets import all_targets
    from slmkit.models import save

    dense_bytes = sum(t.module.weight.numel() for t in all_targets(base)) * 2
    out = save(packed.to(torch.bfloat16), tok, work / "packed")
    q = 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for k in f.keys():
            if k.rsplit(".", 1)[-1] in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"):
                x = f.get_tensor(k)
                q += x.numel() * x.element_size()
    base_file = save(base.to(torch.bfloat16), tok, work / "bf16")
    files = {n: sum(p.stat().st_size for p in d.glob("*.safetensors")) for n, d in
             (("bf16", base_file), ("int4", out))}
    base.float()
    return {"linears_bf16_bytes": dense_bytes, "linears_int4_bytes": q, "ratio": q / dense_bytes,
            "file_bytes": files}


if __name__ == "__main__":
    sys.exit(main())
