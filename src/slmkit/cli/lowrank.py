"""`slmkit lowrank MODEL OUT --method svd|asvd --keep 0.8 [--rank R] [--merge]`.

Each decoder linear becomes two thin ones (W ~= up @ down) holding `keep` x its parameters. The
saved folder keeps the factors and lists them in slmkit.json: reload it with
`slmkit.models.load(OUT)` (one call). `--merge` multiplies the factors back into dense weights
so plain `from_pretrained` loads it (same outputs, no size saving: useful after recovery
training, or to hand the model to another tool).
"""

from __future__ import annotations

from slmkit.cli.step import add_step_parser, run_command
from slmkit.compress.api import LOWRANK

REGISTRY = LOWRANK  # method options come from its configs (see step.foreign_options)


def add_parser(sub, argv=()):
    p = add_step_parser(sub, "lowrank", LOWRANK, "asvd", "factorize linear layers (SVD, ASVD) and save",
                        __doc__, argv)
    p.add_argument("--merge", action="store_true",
                   help="save dense weights (standard checkpoint) instead of the factors")
    return p


def run(ns) -> int:
    r = run_command(ns, "lowrank", "factorized")[0]["result"]
    print(f"factorized {r['layers']} linears: {r['params_before']:,} -> {r['params_after']:,} parameters")
    return 0
