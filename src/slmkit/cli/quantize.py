"""`slmkit quantize MODEL OUT --method rtn|gptq|awq|smoothquant [method options]`.

The method options are the fields of the method's config dataclass (`--bits`, `--group-size`,
`--damp`, `--override down:bits=8`, ...); an option that belongs to another method is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from slmkit.cli.args import add_config_args, given_options
from slmkit.errors import SlmkitError

DEFAULT_CALIB = "embedded"


def add_parser(sub) -> argparse.ArgumentParser:
    from slmkit.compress.api import QUANTIZERS

    p = sub.add_parser("quantize", help="quantize a model and save it (compressed-tensors format)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hub id, model folder, .gguf file, or 'default'")
    p.add_argument("out", help="output folder")
    p.add_argument("--method", default="gptq", choices=QUANTIZERS.names(),
                   help="; ".join(f"{n}: {QUANTIZERS.get(n).help}" for n in QUANTIZERS.names())
                   + " (default: gptq)")
    p.add_argument("--dtype", default="float32",
                   help="dtype to calibrate in (default float32: bf16 calibration is slow on CPUs "
                        "without native bf16, and float32 sums are exact enough)")
    p.add_argument("--save-dtype", default="bfloat16",
                   help="dtype of the weights left unquantized (embeddings, norms, lm_head) on disk")
    p.add_argument("--calib", default=DEFAULT_CALIB,
                   help="calibration mix, e.g. 'embedded', 'self', 'embedded@0.5,self@0.5', "
                        "'notes.txt@1', 'hf:NAME[:CONFIG]' (default: %(default)s)")
    p.add_argument("--calib-n", type=int, default=128, help="calibration sequences (default 128)")
    p.add_argument("--calib-len", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--calib-seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--eval", action="store_true",
                   help="also measure perplexity (embedded eval text, protocol (i)) before and after")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    group = p.add_argument_group("method options (each applies to the methods whose config has it)")
    seen: set[str] = set()
    for name in QUANTIZERS.names():
        seen |= add_config_args(p, QUANTIZERS.get(name).config, "q", prefixed_flags=False,
                                skip=seen, group=group)
    return p


def _config(ns):
    from slmkit.compress.api import QUANTIZERS

    cls = QUANTIZERS.get(ns.method).config
    given = given_options(ns, "q")
    fields = {f.name for f in dataclasses.fields(cls)}
    wrong = sorted(set(given) - fields)
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise SlmkitError(f"{flags} does not apply to --method {ns.method} "
                          f"(its options: {', '.join(sorted(fields))})")
    return cls(**given)


def _ppl(model, tok) -> float:
    from slmkit.data import embedded_text
    from slmkit.eval.perplexity import PerplexityConfig, window_perplexity

    return window_perplexity(model, tok, embedded_text("eval"), PerplexityConfig())["token_perplexity"]


def run(ns) -> int:
    import torch

    from slmkit.compress.api import quantize
    from slmkit.compress.quantize.checkpoint import quantized_modules
    from slmkit.data import build_calibration_with_provenance
    from slmkit.eval.memory import max_rss_bytes
    from slmkit.models import load, save
    from slmkit.models.dtype import resolve_dtype

    cfg = _config(ns)                      # bad options fail before the model loads
    save_dtype = resolve_dtype(ns.save_dtype)
    model, tok = load(ns.model, ns.dtype)
    report: dict = {"method": ns.method}
    if ns.eval:
        report["ppl_before"] = _ppl(model, tok)
    calib = None
    if ns.method != "rtn":
        calib, report["calibration"] = build_calibration_with_provenance(
            model, tok, ns.calib, n=ns.calib_n, length=ns.calib_len, seed=ns.calib_seed)
    t0 = time.perf_counter()
    quantize(model, cfg, calib)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    kernels: dict[str, int] = {}
    for m in quantized_modules(model).values():
        kernels[type(m).__name__] = kernels.get(type(m).__name__, 0) + 1
    report["kernels"] = kernels
    if ns.eval:
        report["ppl_after"] = _ppl(model, tok)
    report["peak_rss_mb"] = round(max_rss_bytes() / 2 ** 20, 1)
    model.to(save_dtype)
    with torch.no_grad():
        out = save(model, tok, ns.out, {"report": report}, overwrite=ns.overwrite)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2 ** 20
    print(f"quantized with {ns.method} in {report['seconds']} s: "
          + ", ".join(f"{n} x{c}" for n, c in kernels.items()) + f"; weights {size:.1f} MB")
    if ns.eval:
        print(f"ppl (embedded eval text, protocol i): {report['ppl_before']:.3f} -> "
              f"{report['ppl_after']:.3f} ({report['ppl_after'] / report['ppl_before']:.3f}x)")
    print(f"wrote {out}")
    return 0
