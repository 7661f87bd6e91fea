"""`slmkit quantize MODEL OUT --method rtn|gptq|awq|smoothquant [method options]`.

The method options are the fields of the chosen method's config dataclass (`--bits`, `--group-size`,
`--damp`, `--override down:bits=8`, ...); an option that belongs to another method is refused.
The output is a compressed-tensors checkpoint; `slmkit.models.load` restores the int kernels.
"""

from __future__ import annotations

from slmkit.cli.step import add_step_parser, run_command
from slmkit.compress.api import QUANTIZERS

REGISTRY = QUANTIZERS  # method options come from its configs (see step.foreign_options)


def add_parser(sub, argv=()):
    return add_step_parser(sub, "quantize", QUANTIZERS, "gptq",
                           "quantize a model and save it (compressed-tensors format)", __doc__, argv)


def run(ns) -> int:
    report, _ = run_command(ns, "quantize", "quantized")
    kernels = report["result"]["kernels"]
    print("kernels: " + ", ".join(f"{n} x{c}" for n, c in kernels.items()))
    return 0
