"""`slmkit export gguf MODEL OUT.gguf --type f16|bf16|f32|q8_0|q4_0`: write a model as a GGUF file
that llama.cpp (and transformers' GGUF loader) reads. Thin: parses into `export_gguf`'s arguments."""

from __future__ import annotations

import argparse

from slmkit.models import load
from slmkit.models.gguf_export import GGUF_TYPES, describe_gguf, export_gguf


def add_parser(subparsers, argv=()) -> argparse.ArgumentParser:
    """Add the `export` command (subcommand `gguf`) to the `slmkit` subparsers."""
    ex = subparsers.add_parser("export", help="write a model in another runtime's format (gguf)")
    fmt = ex.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    g = fmt.add_parser("gguf", help="a single .gguf file for llama.cpp / transformers",
                       description="Export MODEL (and its tokenizer) to OUT as GGUF. f32/f16/bf16 "
                       "keep the weights; q8_0 and q4_0 quantize them (norms stay f32; tensors whose "
                       "rows are not a multiple of 32 fall back to f16; with q4_0 the output head "
                       "stays q8_0). Linears quantized onto a GGUF block grid (quantize --gguf-type) "
                       "are written with their own integers and scales, whatever --type says.")
    g.add_argument("model", help="hub id, model folder, .gguf file, or 'default'")
    g.add_argument("out", help="the .gguf file to write")
    g.add_argument("--type", default="f16", choices=GGUF_TYPES,
                   help="tensor type of the weight matrices (default f16)")
    g.add_argument("--dtype", default="float32",
                   help="dtype to load MODEL in before converting (default float32)")
    g.add_argument("--pre", default=None,
                   help="llama.cpp pre-tokenizer name, overriding the detected one "
                        "(e.g. smollm, qwen2, llama-bpe, gpt-2)")
    g.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return ex


def run(args: argparse.Namespace) -> int:
    """Run `slmkit export ...` from parsed arguments -> exit code."""
    model, tok = load(args.model, args.dtype)
    out = export_gguf(model, tok, args.out, args.type, pre=args.pre, overwrite=args.overwrite)
    info = describe_gguf(out)
    counts = ", ".join(f"{n} {t}" for t, n in sorted(info["type_counts"].items()))
    print(f"wrote {out} ({info['bytes'] / 2**20:.1f} MiB, {info['architecture']}, "
          f"{len(info['tensor_types'])} tensors: {counts})")
    if info["fallback_tensors"]:
        print(f"kept at f16 (rows not a multiple of 32): {', '.join(info['fallback_tensors'])}")
    return 0
