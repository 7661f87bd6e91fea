"""THE training loop: every objective (LM, SFT, distillation, recovery) runs through `train`.

Per optimizer step: `grad_accum` micro-batches (each `objective.loss(model, batch)`, under bf16
autocast where the CPU has native bf16), gradient clipping, AdamW, the lr schedule. Around it:
periodic evaluation, a JSONL log, a progress bar with loss and tokens/s, resumable checkpoints
and a loss-curve PNG. What a step adds over a bare forward/backward/AdamW loop: one
`clip_grad_norm_` (a pass over the gradients), the scheduler update and, every `log_every`
steps, a JSON line — measured in benchmarks/distill.py.

Exact resume: a checkpoint holds the model and the objective's extra parameters, the optimizer,
the scheduler, every RNG state and the step; batches are a pure function of their index
(`Batches.batch`), so a run killed and resumed follows the uninterrupted run's trajectory.

Multi-process: under `torchrun` / `accelerate launch` (WORLD_SIZE > 1) the model is wrapped in
DistributedDataParallel over gloo, each process takes its own rows of every batch, and only
rank 0 logs and writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from slmkit.allocator import active_allocator
from slmkit.errors import SlmkitError
from slmkit.files import write_text_atomic
from slmkit.progress import progress_bar
from slmkit.runtime.cpu import has_native_bf16
from slmkit.train.config import TrainConfig
from slmkit.train.data import Batches
from slmkit.train.schedule import lr_factor

if TYPE_CHECKING:
    import torch

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
CURVE = "loss.png"


def use_bf16_autocast(setting: str) -> bool:
    return setting == "bf16" or (setting == "auto" and has_native_bf16())


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising gloo when launched with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _rng_state() -> dict:
    import numpy as np
    import torch

    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rewrite_log(path: Path, up_to_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (the killed run's tail)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= up_to_step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def evaluate(model, objective, data: Batches, batch_size: int, autocast: bool) -> float:
    """Mean objective loss over every row of `data`, in order."""
    import torch

    was_training = model.training
    model.eval()
    total, rows = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            batch = {"input_ids": data.ids[sl],
                     "labels": (data.labels if data.labels is not None else data.ids)[sl]}
            if data.attention_mask is not None:
                batch["attention_mask"] = data.attention_mask[sl]
            loss, _ = objective.loss(model, batch)
            n = batch["input_ids"].shape[0]
            total, rows = total + float(loss) * n, rows + n
    model.train(was_training)
    return total / rows


def plot_curve(log_path: Path, out: Path) -> Path | None:
    """Loss per step (and eval loss) from the JSONL log -> PNG; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _checkpointing(model, on: bool, fraction: float = 1.0) -> None:
    """Switch transformers' activation (gradient) checkpointing on or off (transformers >= 5.x
    names it activation_checkpointing_*, earlier releases gradient_checkpointing_*). `fraction`
    < 1 keeps it on for that share of the checkpointable layers only, spread evenly: transformers
    checkpoints per layer, on each layer's `gradient_checkpointing` flag."""
    new = "activation_checkpointing_" + ("enable" if on else "disable")
    old = "gradient_checkpointing_" + ("enable" if on else "disable")
    switch = getattr(model, new, None) or getattr(model, old, None)
    if switch is None or not getattr(model, "supports_gradient_checkpointing", False):
        raise SlmkitError(f"gradient_checkpointing: {type(model).__name__} does not support it "
                          "(a transformers model with supports_gradient_checkpointing is needed); "
                          "train without it or with a smaller batch")
    if on:
        switch(**{("activation_checkpointing_kwargs" if switch.__name__ == new
                   else "gradient_checkpointing_kwargs"): {"use_reentrant": False}})
        if fraction < 1:
            from transformers import PreTrainedModel  # models carry the flag too; layers are the rest

            layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True
                      and not isinstance(m, PreTrainedModel)]
            for i, layer in enumerate(layers):   # layer i kept iff floor((i+1) f) > floor(i f)
                layer.gradient_checkpointing = int((i + 1) * fraction) > int(i * fraction)
    else:
        switch()


def _adamw(params: list, cfg: TrainConfig) -> "torch.optim.AdamW":
    """AdamW, fused (one kernel per parameter) when `cfg.fused_optimizer` and torch supports it for
    these parameters; the single-tensor default otherwise (torch refuses `fused` at construction
    for devices or dtypes it has no kernel for)."""
    import torch

    kw = {"lr": cfg.lr, "betas": cfg.betas, "weight_decay": cfg.weight_decay}
    if cfg.fused_optimizer:
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, **kw)


@dataclass
class _Run:
    """What the steps of one `train` call share."""

    model: Any
    objective: Any
    data: Batches
    cfg: TrainConfig
    params: list            # what the optimizer updates: the model's trainable parameters, then `extra`
    extra: list             # the objective's own parameters
    opt: Any
    sched: Any
    rank: int
    world: int
    ckpt: Path | None       # the resumable checkpoint's path (None: no folder, no checkpoint)
    net: Any = None         # the model, or its DistributedDataParallel wrapper
    autocast: bool = False  # bf16 autocast for the forward passes

    def save(self, step: int) -> None:
        """Write the resumable checkpoint (rank 0, with a folder only)."""
        if self.ckpt is None or self.rank != 0:
            return
        _atomic_save({"model": self.model.state_dict(), "extra": [p.detach().clone() for p in self.extra],
                      "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                      "rng": _rng_state(), "step": step, "config": vars(self.cfg)}, self.ckpt)


def train(model, objective, data: Batches, cfg: TrainConfig | None = None, out: str | Path | None = None,
          *, eval_data: Batches | None = None, resume: bool = True,
          callback: Callable[[int, dict], None] | None = None) -> dict:
    """Train `model` in place on `data` with `objective`; returns a summary.

    out        folder for the JSONL log, the resumable checkpoint and the loss curve (None: none
               of them; then nothing can resume)
    resume     continue from `out`'s checkpoint if there is one
    callback   called after every optimizer step with (step, record) on rank 0
    """
    cfg = cfg or TrainConfig()
    rank, world = _distributed()
    folder = Path(out) if out is not None else None
    if folder is not None and rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    data.per_epoch(cfg.batch_size, world)  # refuses data smaller than one batch, before any work
    run = _setup(model, objective, data, cfg, folder, rank, world)
    step = _resume_or_seed(run, folder, resume)
    if cfg.gradient_checkpointing:
        _checkpointing(model, True, cfg.checkpoint_fraction)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.net = DistributedDataParallel(model)
    run.autocast = use_bf16_autocast(cfg.autocast)
    model.train()
    log = open(folder / LOG, "a") if folder is not None and rank == 0 else None
    try:
        summary = _loop(run, step, log, eval_data, callback)
    finally:
        if log is not None:
            log.close()
        if cfg.gradient_checkpointing:
            _checkpointing(model, False)   # the model leaves as it came
    model.eval()
    if folder is not None and rank == 0:
        summary["log"] = str(folder / LOG)
        curve = plot_curve(folder / LOG, folder / CURVE)
        summary["curve"] = str(curve) if curve else None
    return summary


def _setup(model, objective, data: Batches, cfg: TrainConfig, folder: Path | None, rank: int,
           world: int) -> _Run:
    """The optimizer (AdamW over the model's trainable parameters and the objective's) and the lr
    schedule; refuses a run with nothing to train."""
    import torch

    extra = list(objective.parameters())
    params = [p for p in model.parameters() if p.requires_grad] + extra
    if not params:
        raise SlmkitError("nothing to train: no parameter of the model or objective requires grad")
    opt = _adamw(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio))
    ckpt = folder / CHECKPOINT if folder is not None else None
    return _Run(model, objective, data, cfg, params, extra, opt, sched, rank, world, ckpt, net=model)


def _resume_or_seed(run: _Run, folder: Path | None, resume: bool) -> int:
    """With `resume` and a checkpoint, restore everything it holds (and drop the log lines written
    after it); otherwise seed the RNGs and start a fresh log. Returns the step to start from."""
    import torch

    if resume and run.ckpt is not None and run.ckpt.exists():
        state = torch.load(run.ckpt, weights_only=False)
        run.model.load_state_dict(state["model"])
        for p, saved in zip(run.extra, state["extra"]):
            p.data.copy_(saved)
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        if run.rank == 0:
            _rewrite_log(folder / LOG, state["step"])
        return state["step"]
    torch.manual_seed(run.cfg.seed)
    random.seed(run.cfg.seed)
    if run.rank == 0 and folder is not None and (folder / LOG).exists():
        (folder / LOG).unlink()
    return 0


def _loop(run: _Run, step: int, log, eval_data: Batches | None, callback) -> dict:
    """Optimizer steps from `step` to `cfg.steps`, each followed by the periodic evaluation, log
    line, checkpoint and callback; then the final evaluation and checkpoint. Returns the summary."""
    cfg = run.cfg
    tokens_total, t_start, last = 0, time.perf_counter(), {}
    with progress_bar("train", cfg.steps, unit="steps") as advance:
        advance(step)
        while step < cfg.steps:
            last, note = _optimizer_step(run, step)
            step = last["step"]
            tokens_total += last["tokens"]
            if eval_data is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                last["eval_loss"] = evaluate(run.model, run.objective, eval_data, cfg.batch_size, run.autocast)
            if log is not None and (step % cfg.log_every == 0 or "eval_loss" in last or step == cfg.steps):
                log.write(json.dumps(last) + "\n")
                log.flush()
            if cfg.save_every and step % cfg.save_every == 0:
                run.save(step)
            if callback is not None and run.rank == 0:
                callback(step, last)
            advance(1, note)
    summary = {"steps": step, "tokens": tokens_total, "seconds": time.perf_counter() - t_start,
               "final_loss": last.get("loss"), "world_size": run.world, "bf16_autocast": run.autocast}
    summary["tok_s"] = summary["tokens"] / summary["seconds"] if summary["seconds"] > 0 else None
    summary["allocator"] = active_allocator()
    if eval_data is not None:
        summary["eval_loss"] = evaluate(run.model, run.objective, eval_data, cfg.batch_size, run.autocast)
        if log is not None:
            log.write(json.dumps({"step": step, "eval_loss": summary["eval_loss"]}) + "\n")
    run.save(step)
    return summary


def _optimizer_step(run: _Run, step: int) -> tuple[dict, str]:
    """Optimizer step `step + 1`: `grad_accum` micro-batches (gradients all-reduced across ranks),
    gradient clipping, AdamW, the lr schedule. Returns its log record and the progress bar's note."""
    import torch

    cfg, world = run.cfg, run.world
    t0 = time.perf_counter()
    loss_sum, tokens, metrics = 0.0, 0, {}
    for micro in range(cfg.grad_accum):
        batch = run.data.batch(step * cfg.grad_accum + micro, cfg.batch_size, cfg.seed, run.rank, world)
        sync = micro == cfg.grad_accum - 1 or world == 1
        # DDP all-reduces gradients on the last micro-batch's backward only
        with run.net.no_sync() if not sync else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.autocast):
                loss, m = run.objective.loss(run.net, batch)
            if not torch.isfinite(loss):
                raise SlmkitError(f"loss is {float(loss)} at step {step + 1}; lower the "
                                  f"lr (now {run.sched.get_last_lr()[0]:.3g}) or check the data")
            (loss / cfg.grad_accum).backward()
        loss_sum += float(loss.detach()) / cfg.grad_accum
        tokens += run.data.tokens(batch) * world
        for k, v in m.items():
            metrics[k] = metrics.get(k, 0.0) + v / cfg.grad_accum
    if world > 1:
        if run.extra:
            _all_reduce_grads(run.extra, world)
        loss_sum = _mean_over_ranks(loss_sum, world)
    grad_norm = None
    if cfg.max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm))
    lr = run.sched.get_last_lr()[0]
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    record = {"step": step + 1, "loss": loss_sum, "lr": lr, "tokens": tokens,
              "tok_s": tokens / dt, "seconds": dt, **metrics}
    if grad_norm is not None:
        record["grad_norm"] = grad_norm
    return record, f"train loss {loss_sum:.3f} · {tokens / dt:,.0f} tok/s"


def _mean_over_ranks(value: float, world: int) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world


def _all_reduce_grads(params: list["torch.nn.Parameter"], world: int) -> None:
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
