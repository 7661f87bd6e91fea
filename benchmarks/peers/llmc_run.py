"""Run llm-compressor (0.14) one-shot compression on a local model with a fixed calibration set.

Runs INSIDE the peer venv made by `benchmarks/peers/setup.sh llmc` (it never imports slmkit):

    .venv-peers/llmc/bin/python benchmarks/peers/llmc_run.py --model DIR --calib ids.pt \\
        --method gptq|awq|sparsegpt|wanda|smoothquant --out OUTDIR \\
        [--bits 4] [--group-size 64] [--sym] [--actorder none|static|group] [--dampening 0.01]
        [--block-size 128] [--sparsity 0.5] [--nm 2:4] [--smoothing-strength 0.8]
        [--sq-quant gptq|rtn] [--dtype float32|bfloat16|auto] [--batch-size 1] [--threads N]

`ids.pt` is a torch-saved LongTensor [n, length] of calibration token ids. It becomes a
`datasets.Dataset` with `input_ids` / `attention_mask` columns, which oneshot uses as is (no
re-tokenisation: 0.14's get_processed_dataset returns a dataset that has an `input_ids` column
unchanged); all n rows are used, in order (shuffle_calibration_samples=False, batch size 1 by
default, so every sequence keeps its full length).

Recipes (lm_head is always left alone):
  gptq         GPTQModifier, int weights, `bits`, group `group-size` (0 = per channel),
               asymmetric unless --sym, actorder none unless --actorder, dampening_frac.
  awq          AWQModifier (duo_scaling default) + QuantizationModifier with the same weight scheme.
  sparsegpt    SparseGPTModifier(sparsity, mask_structure = --nm or unstructured, dampening).
  wanda        WandaPruningModifier(sparsity, mask_structure).
  smoothquant  SmoothQuantModifier(smoothing_strength) + GPTQModifier or QuantizationModifier
               with the W8A8 preset (int8 per-channel weights, dynamic per-token int8 activations).

Output: OUTDIR holds the checkpoint (save_compressed=True for quantization, i.e. packed
compressed-tensors; dense weights for pruning) plus the tokenizer, and OUTDIR/peer.json with
the timings (compress_s = the oneshot call alone; load_s, save_s, total_s), peak RSS,
versions and the exact modifier configs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

T_PROCESS0 = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the peak resident set of this process so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("llmcompressor", "compressed-tensors", "torch", "transformers", "datasets",
              "accelerate", "auto-round"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def _dump(obj):
    """JSON-able description of a modifier (pydantic model) or anything else."""
    try:
        d = obj.model_dump(mode="json", exclude_none=True)
    except Exception:  # noqa: BLE001  some fields (dtypes, callables) are not JSON-able
        try:
            d = json.loads(json.dumps(obj.model_dump(exclude_none=True), default=str))
        except Exception:  # noqa: BLE001  fall back to repr, informational only
            return repr(obj)
    # drop lifecycle flags (initialized_, started_, ...): state, not configuration
    return {k: v for k, v in d.items() if not k.endswith("_")} if isinstance(d, dict) else d


def cpu_patches() -> list[str]:
    """Work around CPU-only problems in llm-compressor 0.14.0.1; returns what was patched.

    AWQModifier._apply_smoothing calls IntermediatesCache.pin_memory() unconditionally, and
    Tensor.pin_memory() raises "RuntimeError: Cannot access accelerator device when none is
    available." on a CPU-only torch. Pinning only speeds up host-to-device copies, so with no
    accelerator it is skipped (the computation is unchanged).
    """
    import torch

    patched = []
    if not torch.accelerator.is_available():
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, *a, **k: None
        patched.append("IntermediatesCache.pin_memory -> no-op (no accelerator; AWQ pins memory "
                       "unconditionally in 0.14.0.1)")
    return patched


def weight_scheme(args) -> dict:
    """A config_groups entry for int weight-only quantization."""
    weights = {"num_bits": args.bits, "type": "int", "symmetric": args.sym, "dynamic": False}
    if args.group_size and args.group_size > 0:
        weights.update(strategy="group", group_size=args.group_size)
    else:
        weights.update(strategy="channel")
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def actorder_value(name: str):
    return None if name in (None, "none", "None") else name


def build_recipe(args) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    ignore = ["lm_head"]
    m = args.method
    if m == "gptq":
        return [GPTQModifier(config_groups=weight_scheme(args), ignore=ignore,
                             dampening_frac=args.dampening, block_size=args.block_size,
                             actorder=actorder_value(args.actorder))]
    if m == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        awq_kw = {} if args.awq_duo_scaling is None else {"duo_scaling": args.awq_duo_scaling}
        return [AWQModifier(n_grid=args.awq_n_grid, **awq_kw),
                QuantizationModifier(config_groups=weight_scheme(args), ignore=ignore)]
    if m in ("sparsegpt", "wanda"):
        mask = args.nm or "0:0"
        if args.nm:
            n, mm = (int(x) for x in args.nm.split(":"))
            if abs(args.sparsity - n / mm) > 1e-9 and not args.sparsity_given:
                args.sparsity = n / mm
        if m == "sparsegpt":
            from llmcompressor.modifiers.pruning import SparseGPTModifier

            return [SparseGPTModifier(sparsity=args.sparsity, mask_structure=mask,
                                      dampening_frac=args.dampening, block_size=args.block_size,
                                      targets=["Linear"], ignore=["re:.*lm_head"])]
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        return [WandaPruningModifier(sparsity=args.sparsity, mask_structure=mask,
                                     targets=["Linear"], ignore=["re:.*lm_head"])]
    if m == "smoothquant":
        from llmcompressor.modifiers.transform import SmoothQuantModifier

        sq = SmoothQuantModifier(smoothing_strength=args.smoothing_strength)
        if args.sq_quant == "gptq":
            q = GPTQModifier(targets="Linear", scheme="W8A8", ignore=ignore,
                             dampening_frac=args.dampening, block_size=args.block_size,
                             actorder=actorder_value(args.actorder))
        else:
            q = QuantizationModifier(targets="Linear", scheme="W8A8", ignore=ignore)
        return [sq, q]
    raise SystemExit(f"unknown method {m}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local Hugging Face model folder")
    ap.add_argument("--calib", required=True, help="torch-saved LongTensor [n, length] of token ids")
    ap.add_argument("--method", required=True, choices=["gptq", "awq", "sparsegpt", "wanda", "smoothquant"])
    ap.add_argument("--out", required=True, help="output folder (checkpoint + peer.json)")
    ap.add_argument("--bits", type=int, default=4, help="weight bits for gptq/awq (default 4)")
    ap.add_argument("--group-size", type=int, default=64, help="weight group size; 0 = per channel (default 64)")
    ap.add_argument("--sym", action="store_true", help="symmetric weight grid (default asymmetric, as slmkit)")
    ap.add_argument("--actorder", default="none", choices=["none", "static", "weight", "group"],
                    help="GPTQ activation ordering (default none; llm-compressor's own default is static)")
    ap.add_argument("--dampening", type=float, default=0.01, help="GPTQ/SparseGPT dampening_frac (default 0.01)")
    ap.add_argument("--block-size", type=int, default=128, help="GPTQ/SparseGPT block size (default 128)")
    ap.add_argument("--sparsity", type=float, default=None, help="pruning sparsity (default 0.5, or N/M with --nm)")
    ap.add_argument("--nm", default=None, help="N:M mask structure for pruning, e.g. 2:4 (default unstructured)")
    ap.add_argument("--smoothing-strength", type=float, default=0.8, help="SmoothQuant alpha (default 0.8)")
    ap.add_argument("--sq-quant", default="gptq", choices=["gptq", "rtn"],
                    help="quantizer after SmoothQuant: GPTQModifier or QuantizationModifier (W8A8)")
    ap.add_argument("--awq-n-grid", type=int, default=20, help="AWQ grid points (default 20)")
    ap.add_argument("--awq-duo-scaling", default=None, type=lambda s: s if s == "both" else s.lower() == "true",
                    help="AWQ duo_scaling true|false|both (default: llm-compressor's, true)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                    help="dtype the model is loaded and calibrated in (default float32; 'auto' = "
                         "checkpoint dtype, bf16 for the models/ folders get_models.py writes)")
    ap.add_argument("--batch-size", type=int, default=1, help="calibration batch size (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-save", action="store_true", help="skip saving the checkpoint (peer.json only)")
    args = ap.parse_args()
    args.sparsity_given = args.sparsity is not None
    if args.sparsity is None:
        args.sparsity = 0.5

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    patches = cpu_patches()
    t_import = time.perf_counter() - T_PROCESS0
    os.makedirs(args.out, exist_ok=True)
    rec: dict = {"tool": "llm-compressor", "method": args.method, "model": os.path.abspath(args.model),
                 "calib": os.path.abspath(args.calib), "args": {k: v for k, v in vars(args).items()},
                 "versions": _versions(), "patches": patches, "torch_threads": torch.get_num_threads(), "device": "cpu",
                 "status": "started"}

    # --- load (not timed as compression) ---
    t0 = time.perf_counter()
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    model.eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    ids = torch.load(args.calib)
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2):
        raise SystemExit(f"{args.calib}: expected a 2-D LongTensor [n, length], got {type(ids)} "
                         f"{getattr(ids, 'shape', '')}")
    ids = ids.long()
    n, length = ids.shape
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    recipe = build_recipe(args)
    t_load = time.perf_counter() - t0
    rec.update(model_dtype=str(next(model.parameters()).dtype), model_class=type(model).__name__,
               calib_shape=[n, length], calib_tokens=n * length,
               modifiers=[{"class": type(m).__name__, "config": _dump(m)} for m in recipe],
               rss_mb_after_load=_rss_mb())

    # --- compression step: the oneshot call alone (output_dir=None: no save inside) ---
    t0 = time.perf_counter()
    try:
        oneshot(model=model, processor=tok, recipe=recipe, dataset=ds,
                num_calibration_samples=n, shuffle_calibration_samples=False,
                batch_size=args.batch_size, max_seq_length=length,
                output_dir=None, save_compressed=True)
    except BaseException as e:  # record the failure, then re-raise
        rec.update(status="failed", error=f"{type(e).__name__}: {e}",
                   compress_s=time.perf_counter() - t0, peak_rss_mb=_rss_mb())
        with open(os.path.join(args.out, "peer.json"), "w") as f:
            json.dump(rec, f, indent=2, default=str)
        raise
    t_compress = time.perf_counter() - t0
    rss_after_compress = _rss_mb()

    # resolved quantization config (after the modifiers have run)
    qcfg = []
    for m in recipe:
        if hasattr(m, "resolve_quantization_config"):
            try:
                qcfg.append(_dump(m.resolve_quantization_config()))
            except Exception as e:  # noqa: BLE001  informational only
                qcfg.append(f"unavailable: {e}")
    if qcfg:
        rec["resolved_quantization_config"] = qcfg

    # --- save ---
    quantizing = args.method in ("gptq", "awq", "smoothquant")
    t0 = time.perf_counter()
    if not args.no_save:
        # save_pretrained is wrapped by llm-compressor (modify_save_pretrained in oneshot)
        model.save_pretrained(args.out, save_compressed=quantizing)
        tok.save_pretrained(args.out)
    t_save = time.perf_counter() - t0

    rec.update(status="ok", save_compressed=quantizing and not args.no_save,
               load_s=t_load, compress_s=t_compress, save_s=t_save,
               total_s=t_load + t_compress + t_save, import_s=t_import,
               process_s=time.perf_counter() - T_PROCESS0,
               rss_mb_after_compress=rss_after_compress, peak_rss_mb=_rss_mb(),
               peak_rss_note="ru_maxrss of the whole process (includes model load); "
                             "rss_mb_after_load is the peak before compression started")
    with open(os.path.join(args.out, "peer.json"), "w") as f:
        json.dump(rec, f, indent=2, default=str)
    print(json.dumps({k: rec[k] for k in ("method", "status", "load_s", "compress_s", "save_s",
                                          "total_s", "peak_rss_mb")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
