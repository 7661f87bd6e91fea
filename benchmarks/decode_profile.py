"""Where a decode step's time goes, bf16 dense vs int4: the share of the quantized linears, the
lm_head, and everything else (attention over the KV cache, norms, rotary, residuals, Python).

Each module's forward is timed with pre/post hooks during greedy decoding with a KV cache at batch
1 (hooks cost a few microseconds per call; the totals are printed next to the un-hooked step time).

    python benchmarks/decode_profile.py [--model PATH] [--group-size 128] [--tokens 64]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg, write_result  # noqa: E402


def decode_ms(model, ids, tokens: int, after_prompt=lambda: None) -> float:
    """Mean ms per decoded token (greedy, KV cache), prompt excluded."""
    import torch

    from slmkit.models.kvcache import cache_kwargs, output_cache

    with torch.inference_mode():
        out = model(ids, use_cache=True)
        past, nxt = output_cache(out), out.logits[:, -1:].argmax(-1)
        after_prompt()
        t0 = time.perf_counter()
        for _ in range(tokens):
            out = model(nxt, use_cache=True, **cache_kwargs(model, past))
            past, nxt = output_cache(out), out.logits[:, -1:].argmax(-1)
        return (time.perf_counter() - t0) / tokens * 1e3


def breakdown(model, ids, tokens: int) -> dict[str, float]:
    """ms per token in linears of the decoder layers, in lm_head, and the rest."""
    import torch

    spent: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []
    for name, mod in model.named_modules():
        if name == "lm_head":
            kind = "lm_head"
        elif isinstance(mod, torch.nn.Linear) or type(mod).__name__.endswith("Linear"):
            kind = "decoder linears"
        else:
            continue

        def pre(m, args, key=id(mod)):
            starts[key] = time.perf_counter()

        def post(m, args, out, key=id(mod), kind=kind):
            spent[kind] += time.perf_counter() - starts[key]

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        decode_ms(model, ids, 2)   # warm
        total = decode_ms(model, ids, tokens, after_prompt=spent.clear)
    finally:
        for h in handles:
            h.remove()
    out = {k: v / tokens * 1e3 for k, v in spent.items()}
    out["everything else"] = total - sum(out.values())
    out["total (hooked)"] = total
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=model_arg, default="default")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from slmkit.compress.api import quantize
    from slmkit.compress.quantize.config import RTNConfig
    from slmkit.models import load
    from slmkit.runtime import native

    base, tok = load(args.model, "bfloat16")
    ids = torch.randint(100, 1000, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    def int4(head_bits):
        cfg = RTNConfig(bits=4, group_size=args.group_size, symmetric=True, head_bits=head_bits)
        return quantize(copy.deepcopy(base).float(), cfg).to(torch.bfloat16)

    print(native.status())
    rows = {}
    for name, model in (("bf16 dense", base), ("int4, bf16 rest", int4(None)),
                        ("int4 + int8 lm_head", int4(8))):
        plain = decode_ms(model, ids, args.tokens)
        rows[name] = {"step ms (no hooks)": plain, **breakdown(model, ids, args.tokens)}
        print(name, rows[name], flush=True)

    kinds = ["decoder linears", "lm_head", "everything else", "total (hooked)", "step ms (no hooks)"]
    table = Table(title=f"{args.model}: ms per decoded token (batch 1, prompt {args.prompt})")
    table.add_column("part")
    for name in rows:
        table.add_column(name, justify="right")
    for k in kinds:
        table.add_row(k, *(f"{r[k]:.2f}" for r in rows.values()))
    Console(width=120).print(table)
    print(f"wrote {write_result('decode_profile' + args.tag, {'args': vars(args), 'native': native.status(), 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
