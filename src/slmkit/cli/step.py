"""What every compression command shares: MODEL OUT arguments, calibration options, the chosen
method's options derived from its config dataclass, and the run through `slmkit.recipes.steps`
(the same path a recipe stage takes)."""

from __future__ import annotations

import argparse
import dataclasses

from slmkit.cli.args import add_config_args, given_options
from slmkit.data import DEFAULT_SPEC, Calibration
from slmkit.recipes.steps import STEP_OPTIONS, Step, make_step, run_step

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
    p.add_argument("--calib", default=DEFAULT_SPEC,
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


def step_from_args(ns, kind: str) -> Step:
    """The step the command line asks for: the chosen method's config from the options given
    (plus `--target-params` / `--merge` where the command has them)."""
    options = given_options(ns, PREFIX)
    for extra in STEP_OPTIONS[kind]:
        if getattr(ns, extra, None) is not None:
            options[extra] = getattr(ns, extra)
    return make_step(kind, ns.method, options)


def run_command(ns, kind: str, verb: str) -> tuple[dict, object]:
    """Run a compression command through the one step path (`slmkit.recipes.steps.run_step`)."""
    step = step_from_args(ns, kind)
    calibration = Calibration(ns.calib, ns.calib_n, ns.calib_len, ns.calib_seed)
    report, out = run_step(ns.model, step, ns.out, calibration, dtype=ns.dtype, save_dtype=ns.save_dtype,
                           overwrite=ns.overwrite, measure_ppl=ns.eval)
    print(f"{verb} with {ns.method} in {report['seconds']} s; weights on disk "
          f"{report['weights_mb']:.1f} MB")
    if ns.eval:
        print(f"ppl (embedded eval text, protocol i): {report['ppl_before']:.3f} -> "
              f"{report['ppl_after']:.3f} ({report['ppl_after'] / report['ppl_before']:.3f}x)")
    print(f"wrote {out}")
    return report, out
