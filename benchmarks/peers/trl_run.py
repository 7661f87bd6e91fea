"""Time TRL's SFTTrainer on fixed token rows (runs INSIDE .venv-peers/trl; never imports slmkit).

    .venv-peers/trl/bin/python benchmarks/peers/trl_run.py --model DIR --rows ids.pt \\
        --batch-size 4 --steps 30 --warmup-steps 5 [--bf16] [--lr 1e-4]

`ids.pt`: a torch-saved LongTensor [n, length] (n >= (steps + warmup) x batch). The rows go in as
an already-tokenised dataset (input_ids only, no packing), so TRL trains on exactly the tokens
slmkit's loop and the hand loop see. Prints one JSON line: tokens/s over the steps after the
warm-up (step times from a TrainerCallback), peak RSS, versions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--out", default="/tmp/trl-bench")
    args = ap.parse_args()

    import importlib.metadata as md

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    ids = torch.load(args.rows)
    total = args.steps + args.warmup_steps
    ids = ids[: total * args.batch_size]
    ds = Dataset.from_dict({"input_ids": ids.tolist()})
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)

    stamps: list[float] = []
    steals: list[float | None] = []   # /proc/stat's steal time at each stamp (see distill.py)

    def steal() -> float | None:
        try:
            with open("/proc/stat") as f:
                return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    class Clock(TrainerCallback):  # end-to-end step times: data, step, logging, callbacks
        def on_train_begin(self, a, state, control, **kw):
            stamps.append(time.perf_counter())
            steals.append(steal())

        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())
            steals.append(steal())

    cfg = SFTConfig(output_dir=args.out, per_device_train_batch_size=args.batch_size, max_steps=total,
                    learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                    max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[],
                    bf16=args.bf16, use_cpu=True, max_length=ids.shape[1], packing=False,
                    dataloader_num_workers=0, seed=0, adam_beta2=0.95, weight_decay=0.0)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                         callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    steps = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup_steps:]
    tokens = len(steps) * args.batch_size * ids.shape[1]
    first, last = steals[args.warmup_steps], steals[-1]
    stolen = None if None in (first, last) else (last - first) / (sum(steps) * (os.cpu_count() or 1))
    print(json.dumps({"loop": "trl", "tok_s": tokens / sum(steps), "steps": len(steps),
                      "steal_frac": stolen,
                      "step_s_median": sorted(steps)[len(steps) // 2], "wall_s": wall,
                      "bf16_autocast": args.bf16,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "versions": {p: md.version(p) for p in ("trl", "transformers", "torch")}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
