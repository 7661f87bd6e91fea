"""What every compression command shares: MODEL OUT arguments, calibration options, method
options derived from the registry's config dataclasses, and the load -> (eval) -> calibrate ->
apply -> (eval) -> save-with-report sequence."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

from slmkit.cli.args import add_config_args, given_options
from slmkit.data import build_calibration_with_provenance, embedded_text
from slmkit.errors import SlmkitError
from slmkit.eval.memory import max_rss_bytes, param_count
from slmkit.eval.perplexity import PerplexityConfig, window_perplexity
from slmkit.models import load, save
from slmkit.models.dtype import resolve_dtype

# Half the embedded pydoc text, half text sampled from the model itself: on SmolLM2 W4 (GPTQ)
# pydoc alone overfits its domain (Austen prose ppl barely better than RTN's), self-generated
# text alone gives up some in-domain gain; the mix holds up on both (benchmarks/RESULTS.md).
DEFAULT_CALIB = "embedded@0.5,self@0.5"
PREFIX = "m"  # argparse dest prefix of method options


def chosen_method(argv: list[str], command: str, default: str) -> str:
    """The `--method` given on a command line for `command` (else `default`)."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] != command:
        return default
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return default


def add_step_parser(sub, name: str, registry, default: str, help_text: str, doc: str, argv=(),
                    save_dtype: str = "bfloat16") -> argparse.ArgumentParser:
    """The parser of a compression command; its method options are those of the method `argv`
    chooses (the default method's when it chooses none), with that method's defaults."""
    method = chosen_method(list(argv), name, default)
    method = method if method in registry else default
    others = ", ".join(n for n in registry.names() if n != method)
    p = sub.add_parser(name, help=help_text, description=doc,
                       epilog=f"Options of the other methods: slmkit {name} --method M --help ({others}).",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hub id, model folder, .gguf file, or 'default'")
    p.add_argument("out", help="output folder")
    p.add_argument("--method", default=default, choices=registry.names(),
                   help="; ".join(f"{n}: {registry.get(n).help}" for n in registry.names())
                   + f" (default: {default})")
    p.add_argument("--dtype", default="float32",
                   help="dtype to calibrate in (default float32: bf16 calibration is slow on CPUs "
                        "without native bf16)")
    p.add_argument("--save-dtype", default=save_dtype,
                   help=f"dtype of the float weights on disk (default {save_dtype})")
    p.add_argument("--calib", default=DEFAULT_CALIB,
                   help="calibration mix, e.g. 'embedded', 'self', 'embedded@0.5,self@0.5', "
                        "'notes.txt@1', 'hf:NAME[:CONFIG]' (default: %(default)s)")
    p.add_argument("--calib-n", type=int, default=128, help="calibration sequences (default 128)")
    p.add_argument("--calib-len", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--calib-seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--eval", action="store_true",
                   help="also measure perplexity (embedded eval text, protocol (i)) before and after")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    group = p.add_argument_group(f"options of --method {method}")
    add_config_args(p, registry.get(method).config, PREFIX, prefixed_flags=False, group=group)
    return p


def foreign_options(registry, method: str, extra: list[str]) -> str | None:
    """A message for command-line options that belong to another method of `registry`, or None."""
    mine = {f.name for f in dataclasses.fields(registry.get(method).config)}
    flags = [a.split("=", 1)[0] for a in extra if a.startswith("--")]
    owners = {}
    for flag in flags:
        name = flag[2:].replace("-", "_").removeprefix("no_")
        names = {name, name + "s"}                 # --override is the flag of `overrides`
        who = [n for n in registry.names() if n != method and
               names & {f.name for f in dataclasses.fields(registry.get(n).config)}]
        if who and not names & mine:
            owners[flag] = who
    if not owners:
        return None
    flag, who = next(iter(owners.items()))
    return (f"{flag} does not apply to --method {method} (it is an option of --method "
            f"{', '.join(who)}; --method {method} takes: "
            f"{', '.join(_flag(n) for n in sorted(mine))})")


def _flag(field: str) -> str:
    """The command-line flag of a config field (`overrides` is the repeatable `--override`)."""
    return "--" + (field[:-1] if field == "overrides" else field).replace("_", "-")


def method_config(ns, registry, aliases: dict[str, str] | None = None):
    """The chosen method's config from the options given; options of other methods are refused."""
    cls = registry.get(ns.method).config
    given = given_options(ns, PREFIX)
    for flag, field in (aliases or {}).items():  # e.g. --target-params -> target
        value = getattr(ns, flag, None)
        if value is not None:
            given[field] = value
    fields = {f.name for f in dataclasses.fields(cls)}
    wrong = sorted(set(given) - fields)
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise SlmkitError(f"{flags} does not apply to --method {ns.method} "
                          f"(its options: {', '.join(sorted(fields))})")
    return cls(**given)


def _ppl(model, tok) -> float:
    return window_perplexity(model, tok, embedded_text("eval"), PerplexityConfig())["token_perplexity"]


def run_step(ns, cfg, apply: Callable, needs_calib: bool, verb: str) -> tuple[dict, object]:
    """Load, calibrate, `apply(model, cfg, calib)`, save with a report -> (report, out folder)."""
    import torch

    save_dtype = resolve_dtype(ns.save_dtype)      # bad options fail before the model loads
    model, tok = load(ns.model, ns.dtype)
    report: dict = {"method": ns.method, "params_before": param_count(model)}
    if ns.eval:
        report["ppl_before"] = _ppl(model, tok)
    calib = None
    if needs_calib:
        calib, report["calibration"] = build_calibration_with_provenance(
            model, tok, ns.calib, n=ns.calib_n, length=ns.calib_len, seed=ns.calib_seed)
    t0 = time.perf_counter()
    report["result"] = apply(model, cfg, calib)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["params_after"] = param_count(model)
    if ns.eval:
        report["ppl_after"] = _ppl(model, tok)
    report["peak_rss_mb"] = round(max_rss_bytes() / 2 ** 20, 1)
    model.to(save_dtype)
    with torch.no_grad():
        out = save(model, tok, ns.out, {"report": report}, overwrite=ns.overwrite)
    report["weights_mb"] = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2 ** 20
    print(f"{verb} with {ns.method} in {report['seconds']} s; weights on disk "
          f"{report['weights_mb']:.1f} MB")
    if ns.eval:
        print(f"ppl (embedded eval text, protocol i): {report['ppl_before']:.3f} -> "
              f"{report['ppl_after']:.3f} ({report['ppl_after'] / report['ppl_before']:.3f}x)")
    print(f"wrote {out}")
    return report, out
