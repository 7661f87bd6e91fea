"""Quantization quality: perplexity increase of RTN and GPTQ over the unquantized model, in domain
(the embedded eval text) and out of domain (Austen's Emma), protocol (i).

Current state of the quantization work: weights are simulated (dequantized grid values), so this
measures accuracy only; size and speed columns come with packed storage and integer kernels.

    python benchmarks/quantize.py [--model default] [--bits 4] [--group-size 64]
        [--calib-n 128] [--calib-len 512] [--austen-tokens 51200]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import timed, write_result  # noqa: E402

AUSTEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "austen_emma.txt"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--austen-tokens", type=int, default=51200,
                    help="evaluate on this many leading tokens of Emma (0 = all)")
    ap.add_argument("--methods", default="rtn,gptq")
    ap.add_argument("--gptq-damp", type=float, default=0.01)
    ap.add_argument("--gptq-act-order", action="store_true")
    ap.add_argument("--tag", default="", help="suffix for the result file name")
    args = ap.parse_args()

    import copy

    from rich.console import Console
    from rich.table import Table

    from slmkit.compress.api import quantize
    from slmkit.compress.quantize.config import GPTQConfig, RTNConfig
    from slmkit.data import TextData, calibration_set, embedded_text, text_files, token_stream
    from slmkit.eval.memory import PeakRSS
    from slmkit.eval.perplexity import PerplexityConfig, window_perplexity
    from slmkit.models import load

    base, tok = load(args.model, "float32")
    austen = text_files(AUSTEN)
    if args.austen_tokens:
        ids = token_stream(tok, austen)[: args.austen_tokens]
        austen = TextData(f"austen[:{args.austen_tokens} tokens]", [tok.decode(ids)])
    texts = {"in-domain (pydoc eval)": embedded_text("eval"), "out-of-domain (Austen)": austen}
    calib = calibration_set(tok, embedded_text("calib"), args.calib_n, args.calib_len, seed=0)
    ppl_cfg = PerplexityConfig(protocols=["window"], window=args.window)

    def ppls(model):
        return {k: window_perplexity(model, tok, t, ppl_cfg)["token_perplexity"] for k, t in texts.items()}

    rows = {"baseline": {"ppl": ppls(base), "seconds": 0.0, "peak_rss_mb": None}}
    configs = {"rtn": RTNConfig(bits=args.bits, group_size=args.group_size),
               "gptq": GPTQConfig(bits=args.bits, group_size=args.group_size, damp=args.gptq_damp,
                                  act_order=args.gptq_act_order, static_groups=args.gptq_act_order)}
    t: dict[str, float] = {}
    for name in args.methods.split(","):
        model = copy.deepcopy(base)
        with PeakRSS() as mem, timed(t, name):
            quantize(model, configs[name], calib)
        rows[name] = {"ppl": ppls(model), "seconds": t[name], "peak_rss_mb": mem.peak_bytes / 2**20}
        del model

    table = Table(title=f"{args.model}: W{args.bits} g{args.group_size} (simulated), calib "
                        f"{args.calib_n}x{args.calib_len} embedded, ppl protocol (i) window {args.window}")
    table.add_column("method")
    for k in texts:
        table.add_column(f"ppl {k}", justify="right")
        table.add_column("ratio", justify="right")
    table.add_column("quantize s", justify="right")
    table.add_column("peak RSS MB", justify="right")
    for name, r in rows.items():
        cells = []
        for k in texts:
            cells += [f"{r['ppl'][k]:.3f}", f"{r['ppl'][k] / rows['baseline']['ppl'][k]:.3f}x"]
        table.add_row(name, *cells, f"{r['seconds']:.1f}", "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}")
    Console(width=150).print(table)
    print(f"wrote {write_result('quantize' + args.tag, {'args': vars(args), 'rows': rows, 'texts': {k: v.describe() for k, v in texts.items()}})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
