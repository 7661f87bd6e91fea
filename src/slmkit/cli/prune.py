"""`slmkit prune MODEL OUT --method magnitude|wanda|sparsegpt|depth|width [method options]`.

Unstructured (magnitude, wanda, sparsegpt): `--sparsity 0.5`, `--nm 2:4`, `--owl`; zeros are
stored in ordinary dense weights. Structured (depth, width): `--target 0.25` (fraction of the
parameters to remove) or `--target-params 100M` (size of the result); the saved model is
physically smaller with a standard config that plain `from_pretrained` loads.
"""

from __future__ import annotations

from slmkit.cli.step import add_step_parser, method_config, run_step
from slmkit.compress.api import PRUNERS, prune

REGISTRY = PRUNERS  # method options come from its configs (see step.foreign_options)


def add_parser(sub, argv=()):
    p = add_step_parser(sub, "prune", PRUNERS, "wanda", "prune a model and save it", __doc__, argv,
                        save_dtype="bfloat16")
    p.add_argument("--target-params", default=None,
                   help="structured methods: parameter count of the result, e.g. 100M")
    return p


def _summary(report: dict) -> dict:
    """The part of a pruning report worth keeping in slmkit.json (structured reports list every
    removed channel; those indices stay out)."""
    keep = ("total", "layers") if "total" in report else (
        "kind", "removed_layers", "params_before", "params_after", "bytes_before", "bytes_after",
        "fraction_removed", "config_sizes")
    return {k: report[k] for k in keep if k in report}


def run(ns) -> int:
    cfg = method_config(ns, PRUNERS, {"target_params": "target"})
    needs_calib = ns.method != "magnitude" or bool(getattr(cfg, "owl", False))

    def apply(model, cfg, calib):
        report = prune(model, cfg, calib)
        summary = _summary(report)
        if "total" in summary:
            t = summary["total"]
            print(f"sparsity {t['sparsity']:.4f} over {t['params']:,} target weights")
        return summary

    run_step(ns, cfg, apply, needs_calib=needs_calib, verb="pruned")
    return 0
