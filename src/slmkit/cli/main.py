"""`slmkit` — info, eval, convert, quantize, prune, lowrank, export, finetune, distill, generate, proxy, route, shrink, report, serve, lm-eval. Errors print one line and exit 1 (`--debug`: traceback)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from slmkit import __version__
from slmkit.allocator import reexec_for
from slmkit.cli.args import Parser, add_config_args, config_from_args
from slmkit.cli.show import print_info, print_metrics
from slmkit.cli.step import foreign_options
from slmkit.errors import SlmkitError
from slmkit.eval.lm_eval_bridge import cli_passthrough, run_lm_eval
from slmkit.eval.report import Report
from slmkit.eval.tasks import TASKS, evaluate
from slmkit.models import load, save

# task name -> (option prefix, aliases for the most used fields)
TASK_OPTIONS = {"ppl": {"data": "--data"}, "mc": {"path": "--mc"}, "gen": {"path": "--gen"},
                "speed": {}}


def _parser(argv: list[str] = ()) -> argparse.ArgumentParser:
    """The command line; a compression command lists the options of the method `argv` chooses."""
    p = Parser(prog="slmkit", description="Small language models on ordinary CPUs.")
    p.add_argument("--version", action="version", version=f"slmkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="describe a model (architecture, size, adapter, dtypes)")
    info.add_argument("model", help="hub id, model folder, .gguf file, or 'default'")
    info.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")

    ev = sub.add_parser("eval", help="evaluate one or more models side by side")
    ev.add_argument("models", nargs="+", metavar="MODEL",
                    help="hub id, model folder, .gguf file, or 'default'")
    ev.add_argument("--tasks", default="auto", help=f"comma list of {', '.join(TASKS.names())}; "
                    "auto = ppl,speed plus mc/gen when their files are given (default: auto)")
    ev.add_argument("--dtype", default="auto", help="dtype to load in; auto picks by CPU for "
                    "prefill-type work (speed picks per phase itself)")
    ev.add_argument("--out", default=None, help="folder for report.json/.md (and .png for 2+ models)")
    ev.add_argument("--lm-eval-tasks", default=None,
                    help="also run these lm-evaluation-harness tasks (needs slmkit[lm-eval])")
    ev.add_argument("--lm-eval-limit", type=int, default=None, help="items per lm-eval task")
    ev.add_argument("--lm-eval-include", default=None, help="folder of extra lm-eval task YAMLs")
    for name, aliases in TASK_OPTIONS.items():
        add_config_args(ev, TASKS.get(name).config, name, f"{name}: {TASKS.get(name).help}", aliases)

    cv = sub.add_parser("convert", help="GGUF file / hub id / folder -> standard HF folder")
    cv.add_argument("source")
    cv.add_argument("out")
    cv.add_argument("--dtype", default="bfloat16", help="dtype of the saved weights (default bfloat16)")
    cv.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    for module in dict.fromkeys(MODULE_COMMANDS.values()):
        importlib.import_module(f"slmkit.cli.{module}").add_parser(sub, argv)

    # handled in main() before parsing; listed here for --help
    sub.add_parser("lm-eval", help="lm-eval's own command line, with `--model slmkit` available "
                                   "(e.g. --model slmkit --model_args path=default --tasks ...)")
    return p


def _selected_tasks(ns) -> list[str]:
    if ns.tasks == "auto":
        names = ["ppl", "speed"]
        names += [t for t in ("mc", "gen") if getattr(ns, f"{t}__path", None)]
        return names
    names = [t.strip() for t in ns.tasks.split(",") if t.strip()]
    for t in names:
        TASKS.get(t)  # raises a clear error for unknown names
    if not names:
        raise SlmkitError("--tasks is empty")
    return names


def cmd_eval(ns) -> int:
    tasks = {t: config_from_args(ns, TASKS.get(t).config, t) for t in _selected_tasks(ns)}
    lm_tasks = [t for t in (ns.lm_eval_tasks or "").split(",") if t]
    report = Report()
    for source in ns.models:
        model, tok = load(source, ns.dtype)
        metrics = evaluate(model, tok, tasks)
        if lm_tasks:
            metrics["lm_eval"] = run_lm_eval(model, tok, lm_tasks, limit=ns.lm_eval_limit,
                                             include_path=ns.lm_eval_include)
        report.add(source, metrics)
        del model, tok
    print_metrics(report)
    if ns.out:
        for path in report.save(ns.out):
            print(f"wrote {path}")
    return 0


def cmd_info(ns) -> int:
    model, tok = load(ns.model, ns.dtype)
    print_info(model, tok)
    return 0


def cmd_convert(ns) -> int:
    model, tok = load(ns.source, ns.dtype)
    out = save(model, tok, ns.out, {"steps": [{"convert": {"source": ns.source, "dtype": ns.dtype}}]},
               overwrite=ns.overwrite)
    print(f"wrote {out}")
    return 0


def one_line(e: BaseException) -> str:
    """Messages from deep inside libraries carry newlines; the CLI prints one line."""
    return " ".join(str(e).split())


# command -> module `slmkit.cli.<module>` with add_parser(sub) and run(ns)
MODULE_COMMANDS = {"quantize": "quantize", "prune": "prune", "lowrank": "lowrank", "export": "export",
                   "finetune": "train", "distill": "train",
                   "generate": "collab", "proxy": "collab", "route": "collab",
                   "shrink": "shrink", "report": "shrink", "serve": "serve"}


def _module_command(module: str):
    def run(ns) -> int:
        return importlib.import_module(f"slmkit.cli.{module}").run(ns)
    return run


COMMANDS = {"info": cmd_info, "eval": cmd_eval, "convert": cmd_convert,
            **{name: _module_command(module) for name, module in MODULE_COMMANDS.items()}}


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; an option of another compression method, or any unknown option, is one
    clear error."""
    parser = _parser(argv)
    ns, extra = parser.parse_known_args(argv)
    if extra:
        module = importlib.import_module(f"slmkit.cli.{MODULE_COMMANDS[ns.command]}") \
            if ns.command in MODULE_COMMANDS else None
        registry = getattr(module, "REGISTRY", None)
        msg = registry and foreign_options(registry, ns.method, extra)
        raise SlmkitError(msg or f"unrecognized arguments: {' '.join(extra)} "
                                 f"(see `slmkit {ns.command} --help`)")
    return ns


def main(argv: list[str] | None = None) -> int:
    """The `slmkit` command. Called without argv (the console script), a training command
    re-executes itself under jemalloc where installed (`slmkit.allocator`); with argv (tests,
    embedding) it always runs in this process."""
    console = argv is None
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv  # accepted anywhere on the line
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        rest = argv[1:] if argv[:1] == ["--debug"] else argv
        if rest[:1] == ["lm-eval"]:  # lm-eval's own arguments, untouched by our parser
            return cli_passthrough(rest[1:])
        ns = _parse([a for a in argv if a != "--debug"])
        if console:
            reexec_for(ns.command, argv)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # slmkit shows its own progress
        return COMMANDS[ns.command](ns)
    except SlmkitError as e:
        if debug:
            traceback.print_exc()
        print(f"slmkit: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slmkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: say so, traceback on request
        if debug:
            traceback.print_exc()
        print(f"slmkit: internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
