"""Where an integer-kernel checkpoint's decode speed-up comes from: the same checkpoint run with
slmkit's kernel options switched off one at a time, alternated with the bf16 source in one
process (5 rounds of `--steps` decode steps after a 128-token prompt, medians).

    python benchmarks/decode_attribution.py --model RUN/03-quantize/model [--source default] [--tag _smollm2]

Rows: the source in bf16; the checkpoint with separate q/k/v and gate/up kernel calls and aten's
int8 head; + slmkit's native int8 head; + fused siblings (`runtime/fuse.py`), which is what
`slmkit.models.load` gives.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg, write_result  # noqa: E402


def load_variant(path: str, fuse: bool, native_int8: bool):
    from slmkit.models import load

    fuse = importlib.import_module("slmkit.runtime.fuse")
    original = fuse.fuse_shared_inputs
    if not fuse:
        fuse.fuse_shared_inputs = lambda sites: 0
    try:
        model, _ = load(path, "float32")
    finally:
        fuse.fuse_shared_inputs = original
    if not native_int8:
        from slmkit.runtime.kernels import Int8Linear

        for m in model.modules():
            if type(m) is Int8Linear:
                m._native_ok = False
    return model.eval()


def decode_tok_s(model, ids, steps: int) -> float:
    import torch

    from slmkit.models.kvcache import cache_kwargs, output_cache

    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        past, nxt = output_cache(out), out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=nxt, use_cache=True, **cache_kwargs(model, past))
            past = output_cache(out)
        return steps / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, required=True, help="an integer-kernel slmkit checkpoint folder")
    ap.add_argument("--source", default="default", help="the bf16 original to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    import torch

    from slmkit.models import load

    source, _ = load(args.source, "bfloat16")
    models = {"source (bf16)": source,
              "separate calls, aten int8 head": load_variant(args.model, False, False),
              "+ native int8 head": load_variant(args.model, False, True),
              "+ fused siblings (default)": load_variant(args.model, True, True)}
    ids = torch.randint(0, 1000, (1, 128), generator=torch.Generator().manual_seed(0))
    runs: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            runs[name].append(decode_tok_s(model, ids, args.steps))
    base = statistics.median(runs["source (bf16)"])
    rows = {k: {"tok_s": statistics.median(v), "vs_source": statistics.median(v) / base, "rounds": v}
            for k, v in runs.items()}
    for k, r in rows.items():
        print(f"{k:34s} {r['tok_s']:7.1f} tok/s  {r['vs_source']:.2f}x")
    print(f"wrote {write_result('decode_attribution' + args.tag, {'args': vars(args), 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
