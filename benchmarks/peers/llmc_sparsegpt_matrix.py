"""llm-compressor's own SparseGPT routine (`sparsify_weight`, 0.14) on given weights and Hessians.

Runs INSIDE the peer venv (`benchmarks/peers/setup.sh llmc`; it never imports slmkit), driven by
benchmarks/sparsegpt_parity.py:

    .venv-peers/llmc/bin/python benchmarks/peers/llmc_sparsegpt_matrix.py IN.pt OUT.pt

IN.pt: {"cases": {name: {"W": [out, in], "H": [in, in]}}, "sparsity": float, "nm": [n, m] or
None, "block_size": int, "damp": float}. OUT.pt: {name: pruned W}.
"""

import sys

import torch
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight


def main() -> int:
    spec = torch.load(sys.argv[1])
    n, m = spec["nm"] or (0, 0)
    out = {}
    for name, case in spec["cases"].items():
        linear = torch.nn.Linear(case["W"].shape[1], case["W"].shape[0], bias=False)
        linear.weight.data = case["W"].clone()
        # llm-compressor's N is the count pruned per group of M (2:4 prunes 2)
        _, out[name] = sparsify_weight(linear, {linear: case["H"].clone()}, spec["sparsity"], m - n if m else 0,
                                       m, spec["block_size"], spec["damp"], False)
    torch.save(out, sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
