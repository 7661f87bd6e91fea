"""A tiny deterministic training run, driven by tests as a separate process (to kill it, or to
launch it under torchrun):  python train_script.py OUT STEPS [--kill-at N] [--batch-size B]

Writes OUT/final_state.pt (rank 0; OUT/final_state_rank1.pt on rank 1) with the trained weights."""

import argparse
import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from slmkit.models.tiny import tiny_model  # noqa: E402
from slmkit.train import Batches, CausalLM, TrainConfig, train  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("steps", type=int)
    ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = tiny_model("llama", seed=0)
    ids = torch.randint(3, 500, (16, 24), generator=torch.Generator().manual_seed(1))
    # fp32: under bf16 autocast (the default on CPUs with native bf16) a batch of 4 and two ranks
    # of 2 round differently, so the DDP-equals-one-process comparison needs float32
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=2, lr=3e-3,
                      warmup=2, save_every=2, seed=5, autocast="off")

    def kill(step, record):
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a real crash

    train(model, CausalLM(), Batches(ids), cfg, args.out, callback=kill)
    rank = int(os.environ.get("RANK", "0"))
    name = "final_state.pt" if rank == 0 else f"final_state_rank{rank}.pt"
    torch.save(model.state_dict(), os.path.join(args.out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
