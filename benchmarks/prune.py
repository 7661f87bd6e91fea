"""Pruning acceptance: perplexity ratio to the dense model in domain (embedded eval text) and out
of domain (Austen's Emma), protocol (i), for magnitude / Wanda / SparseGPT at 50% and 2:4, with
llm-compressor's SparseGPT and Wanda (own venv, by subprocess) on the same calibration ids; and
structured depth / width pruning to -25% parameters: size on disk, decode speed, ppl before any
recovery training.

    python benchmarks/prune.py [--model default] [--calib embedded] [--peer] [--structured]
        [--patterns 0.5,2:4] [--methods magnitude,wanda,sparsegpt] [--tag _smollm2]
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

from slmkit.compress.prune.config import MASK_SCOPES  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="default")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt",
                    help="slmkit's unstructured methods ('none': only the peer and/or structured rows)")
    ap.add_argument("--patterns", default="0.5,2:4", help="sparsities and/or N:M patterns")
    ap.add_argument("--calib", default="embedded",
                    help="calibration spec(s), ';'-separated: every calibrated method runs on each; "
                         "the peer and the structured rows use the first")
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--eval-tokens", type=int, default=25600)
    ap.add_argument("--dense-ppl", default=None, metavar="IN,OUT",
                    help="the dense model's ppl from an earlier run of the same model and texts "
                         "(skips re-measuring it; recorded as given)")
    ap.add_argument("--mask-scope", choices=MASK_SCOPES, default=None,
                    help="SparseGPT's unstructured mask scope (default: its config's)")
    ap.add_argument("--damp", type=float, default=None, help="SparseGPT's dampening (default: its config's)")
    ap.add_argument("--calib-batch", type=int, default=None,
                    help="calibration sequences per forward (default: each config's; the peer runs 1)")
    ap.add_argument("--calib-dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                    help="precision of the calibration passes (slmkit's calibrated methods)")
    ap.add_argument("--speed-rounds", type=int, default=3, help="alternating speed rounds (structured)")
    ap.add_argument("--peer", action="store_true", help="llm-compressor SparseGPT and Wanda too")
    ap.add_argument("--peer-rows", default="",
                    help="only these peer rows, e.g. 'wanda 0.5,sparsegpt 2:4' (default: both methods x --patterns)")
    ap.add_argument("--structured", action="store_true", help="depth and width to -25%%")
    ap.add_argument("--structured-target", type=float, default=0.25)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    for row in filter(str.strip, args.peer_rows.split(",")):
        if len(row.split()) != 2 or row.split()[0] not in ("sparsegpt", "wanda"):
            ap.error(f"--peer-rows: {row.strip()!r} is not 'METHOD PATTERN' with METHOD sparsegpt or wanda")
    if args.dense_ppl is not None:
        try:
            args.dense_ppl = tuple(float(v) for v in args.dense_ppl.split(","))
        except ValueError:
            args.dense_ppl = ()
        if len(args.dense_ppl) != 2:
            ap.error("--dense-ppl: give two numbers, the in-domain and the Austen ppl, e.g. 12.04,27.37")
    return args


def pattern_kwargs(p: str) -> dict:
    return {"nm": p} if ":" in p else {"sparsity": float(p)}


def main() -> int:
    args = parse_args()
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from slmkit.compress import PRUNERS, DepthPruneConfig, WidthPruneConfig, prune
    from slmkit.eval.memory import PeakRSS
    from slmkit.generate.calibration import build_calibration_with_provenance
    from slmkit.models import load, save

    base, tok = load(args.model, "float32")
    texts = eval_texts(tok, args.eval_tokens)
    ppls = ppl_function(tok, texts, args.window)

    specs = [s for s in args.calib.split(";") if s]
    calibs = {spec: build_calibration_with_provenance(base, tok, spec, n=args.calib_n,
                                                      length=args.calib_len, seed=0) for spec in specs}
    calib = calibs[specs[0]][0]
    if args.dense_ppl:  # a dense row measured earlier with the same model, texts and protocol
        ppl_in, ppl_out = args.dense_ppl
        rows = {"dense (fp32)": {"ppl": {"in": ppl_in, "out": ppl_out}, "given": True}}
    else:
        rows = {"dense (fp32)": {"ppl": ppls(base)}}
    print("dense (fp32)", rows["dense (fp32)"], flush=True)
    methods = [m for m in args.methods.split(",") if m and m != "none"]

    def checkpoint():  # partial results survive a crash or an interrupt later in the run
        write_result("prune" + args.tag + ".partial", {"args": vars(args), "rows": rows})
    t: dict[str, float] = {}
    for pattern in args.patterns.split(","):
        for name in methods:
            for spec in ([None] if name == "magnitude" else specs):
                label = f"{name} {pattern}" + (f" [{spec}]" if spec else "")
                model = copy.deepcopy(base)
                kw = pattern_kwargs(pattern)
                if name == "sparsegpt" and args.damp is not None:
                    kw["damp"] = args.damp
                    label += f" damp {args.damp}"
                if name == "sparsegpt" and args.mask_scope is not None:
                    kw["mask_scope"] = args.mask_scope
                    label += f" {args.mask_scope} masks"
                if spec and args.calib_batch is not None:
                    kw["batch_size"] = args.calib_batch
                    label += f" batch {args.calib_batch}"
                if spec and args.calib_dtype != "float32":
                    kw["calib_dtype"] = args.calib_dtype
                    label += f" calib {args.calib_dtype}"
                cfg = PRUNERS.get(name).config(**kw)
                with PeakRSS() as mem, timed(t, label):
                    report = prune(model, cfg, calibs[spec][0] if spec else None)
                rows[label] = {"ppl": ppls(model), "seconds": t[label], "peak_rss_mb": mem.peak_bytes / 2**20,
                               "rss_added_mb": mem.added_bytes / 2**20,
                               "sparsity": report["total"]["sparsity"], "calibration": spec}
                print(label, rows[label], flush=True)
                checkpoint()
                del model

    work = Path(tempfile.mkdtemp(prefix="slmkit-pbench-"))
    src = save(base.to(torch.bfloat16), tok, work / "base")  # the bf16 reference for sizes, and the peer's input
    base.float()
    if args.peer:
        from transformers import AutoModelForCausalLM

        wanted = [tuple(r.split()) for r in args.peer_rows.split(",") if r.strip()]
        for name, pattern in wanted or [(n, p) for p in args.patterns.split(",") for n in ("sparsegpt", "wanda")]:
            extra = ["--nm", pattern] if ":" in pattern else ["--sparsity", pattern]
            out, info = run_llmc(name, src, calib, work / f"{name}_{pattern.replace(':', '-')}", extra)
            peer = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
            key = f"llm-compressor {name} {pattern} [{specs[0]}]"
            rows[key] = {"ppl": ppls(peer), "seconds": info["compress_s"],
                         "peak_rss_mb": info["peak_rss_mb"], "peer": info}
            print(key, rows[key], flush=True)
            checkpoint()
            del peer

    extra = {}
    if args.structured:
        from slmkit.eval.speed import SpeedConfig, alternating

        dense_disk = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        extra["dense"] = {"params": base.num_parameters(), "disk_bytes": dense_disk}
        pruned = {}
        for name, cfg in (("depth", DepthPruneConfig(target=args.structured_target)),
                          ("width", WidthPruneConfig(target=args.structured_target))):
            model = copy.deepcopy(base)
            with PeakRSS() as mem, timed(t, name):
                prune(model, cfg, calib)
            out = save(model.to(torch.bfloat16), tok, work / f"structured_{name}")
            model.float()
            disk = sum(p.stat().st_size for p in out.glob("*.safetensors"))
            key = f"{name} -{args.structured_target:.0%}"
            rows[key] = {"ppl": ppls(model), "seconds": t[name], "peak_rss_mb": mem.peak_bytes / 2**20,
                         "rss_added_mb": mem.added_bytes / 2**20, "params": model.num_parameters(),
                         "disk_bytes": disk, "disk_ratio": disk / dense_disk}
            print(name, rows[key], flush=True)
            checkpoint()
            pruned[key] = model
        # dense and pruned timed in alternation in this process (dense, depth, width, dense, ...):
        # timing one after the other lets the machine's state drift between them
        speed_cfg = SpeedConfig(prompt_tokens=128, new_tokens=128, repeats=1,
                                prefill_dtype="float32", decode_dtype="bfloat16")
        sp = alternating({"dense": (base, tok), **{k: (m, tok) for k, m in pruned.items()}},
                         speed_cfg, rounds=args.speed_rounds)
        extra["dense"]["speed"] = sp.pop("dense")
        for key, v in sp.items():
            rows[key].update(speed=v, decode_speedup=v["decode_tok_s"] / extra["dense"]["speed"]["decode_tok_s"],
                             prefill_speedup=v["prefill_tok_s"] / extra["dense"]["speed"]["prefill_tok_s"])
            print(key, f"decode {rows[key]['decode_speedup']:.2f}x prefill {rows[key]['prefill_speedup']:.2f}x")
        checkpoint()
        del pruned

    table = Table(title=f"{args.model}: calib {args.calib_n}x{args.calib_len}, "
                        f"ppl protocol (i) window {args.window}, {args.eval_tokens} tokens per text")
    for c in ("method", "ppl in-domain", "ratio", "ppl Austen", "ratio", "seconds", "peak RSS MB", "disk / decode"):
        table.add_column(c, justify="left" if c == "method" else "right")
    b = rows["dense (fp32)"]["ppl"]
    for label, r in rows.items():
        tail = (f"{r['disk_ratio']:.2f}x / {r['decode_speedup']:.2f}x" if "decode_speedup" in r else "-")
        table.add_row(escape(label), f"{r['ppl']['in']:.3f}", f"{r['ppl']['in'] / b['in']:.3f}x",
                      f"{r['ppl']['out']:.3f}", f"{r['ppl']['out'] / b['out']:.3f}x",
                      f"{r['seconds']:.1f}" if "seconds" in r else "-",
                      f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-", tail)
    Console(width=170).print(table)
    payload = {"args": vars(args), "rows": rows, "texts": {k: v.describe() for k, v in texts.items()},
               "calibration": {spec: prov for spec, (_, prov) in calibs.items()}, **extra}
    print(f"wrote {write_result('prune' + args.tag, payload)}")
    (RESULTS / f"prune{args.tag}.partial.json").unlink(missing_ok=True)  # the full result supersedes it
    return 0


if __name__ == "__main__":
    sys.exit(main())
