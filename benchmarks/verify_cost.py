"""What a few-token forward costs against a one-token one: speculative verification of k drafts
is a (k+1)-token forward, and the speed-up formula assumes it costs one step. Measured through
PyTorch's plain nn.Linear and through slmkit's few-token linears (slmkit.models.narrow, the
native dense_gemm kernel where it applies), over a 200-token KV cache, best of --repeats,
token counts and paths interleaved.

    python benchmarks/verify_cost.py --model models/qwen2.5-coder-1.5b-instruct \
        --dtypes float32,bfloat16 --tag _qwen15b
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg, write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, required=True)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--tokens", default="1,2,5,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import DynamicCache

    from slmkit.models import load
    from slmkit.models.kvcache import cache_kwargs
    from slmkit.models.narrow import narrow_linears
    from slmkit.runtime.cpu import cpu_flags, has_native_bf16

    counts = [int(n) for n in args.tokens.split(",")]
    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict] = {}
    for dtype in args.dtypes.split(","):
        model, _ = load(args.model, dtype=getattr(torch, dtype))
        model.eval()
        vocab = model.config.vocab_size
        with torch.inference_mode():
            base = DynamicCache()
            model(torch.randint(0, vocab, (1, args.context), generator=gen), use_cache=True,
                  **cache_kwargs(model, base))

        def step(n: int, narrow: bool) -> float:
            cache, x = copy.deepcopy(base), torch.randint(0, vocab, (1, n), generator=gen)
            t0 = time.perf_counter()
            with torch.inference_mode():
                if narrow:
                    with narrow_linears(model):
                        model(x, use_cache=True, **cache_kwargs(model, cache))
                else:
                    model(x, use_cache=True, **cache_kwargs(model, cache))
            return time.perf_counter() - t0

        best: dict[tuple[int, bool], float] = {}
        for _ in range(args.repeats):
            for n in counts:
                for narrow in (False, True):
                    best[n, narrow] = min(best.get((n, narrow), float("inf")), step(n, narrow))
        results[dtype] = {path: {str(n): {"ms": best[n, narrow] * 1e3, "steps": best[n, narrow] / best[1, narrow]}
                                 for n in counts}
                          for path, narrow in (("plain linear", False), ("slmkit", True))}

    t = Table(title=f"{args.model}: few-token forward over a {args.context}-token cache, best of {args.repeats}")
    t.add_column("dtype / path")
    for n in counts:
        t.add_column(f"{n} tok ms (steps)", justify="right")
    for dtype, paths in results.items():
        for path, row in paths.items():
            t.add_row(f"{dtype} {path}", *(f"{row[str(n)]['ms']:.0f} ({row[str(n)]['steps']:.2f})" for n in counts))
    Console(width=140).print(t)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    out = write_result("verify_cost" + args.tag, {"args": vars(args), "cpu_flags": flags,
                                                   "native_bf16": has_native_bf16(), "results": results})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
