"""`slmkit prune MODEL OUT --method magnitude|wanda|sparsegpt|depth|width [method options]`.

Unstructured (magnitude, wanda, sparsegpt): `--sparsity 0.5`, `--nm 2:4`, `--owl`; zeros are
stored in ordinary dense weights. Structured (depth, width): `--target 0.25` (fraction of the
parameters to remove) or `--target-params 100M` (size of the result); the saved model is
physically smaller with a standard config that plain `from_pretrained` loads.
"""

from __future__ import annotations

from slmkit.cli.step import add_step_parser, run_command
from slmkit.compress.api import PRUNERS

REGISTRY = PRUNERS  # method options come from its configs (see step.foreign_options)


def add_parser(sub, argv=()):
    p = add_step_parser(sub, "prune", PRUNERS, "wanda", "prune a model and save it", __doc__, argv,
                        save_dtype="bfloat16")
    p.add_argument("--target-params", default=None,
                   help="structured methods: parameter count of the result, e.g. 100M")
    return p


def run(ns) -> int:
    report, _ = run_command(ns, "prune", "pruned")
    total = report["result"].get("total")
    if total:
        print(f"sparsity {total['sparsity']:.4f} over {total['params']:,} target weights")
    return 0
