"""The training loop's settings (one dataclass; the CLI and recipes build the same one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from slmkit.errors import SlmkitError


@dataclass
class TrainConfig:
    """Settings of the training loop; `slmkit finetune`/`distill` options and a recipe's training keys
    are its fields."""

    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=4, metadata={"help": "sequences per micro-batch (per process)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "AdamW betas"})
    warmup: float = field(default=0.05, metadata={
        "help": "linear warm-up: a fraction of `steps` if < 1, else a number of steps"})
    schedule: Literal["cosine", "linear", "constant"] = field(default="cosine", metadata={
        "help": "decay after warm-up, down to min_lr_ratio x lr"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr as a fraction of lr"})
    max_grad_norm: float | None = field(default=1.0, metadata={
        "help": "clip the global gradient norm to this (None = no clipping)"})
    autocast: Literal["auto", "bf16", "off"] = field(default="auto", metadata={
        "help": "bf16 autocast: auto = on where the CPU has native bf16 (AMX/AVX512-BF16), where "
                "it is ~3x faster; off on AVX2-only CPUs, where bf16 matmuls are several times slower"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each decoder layer's activations in backward instead of keeping them "
                "(transformers' gradient checkpointing): less memory, ~1/3 more compute per step"})
    checkpoint_fraction: float = field(default=1.0, metadata={
        "help": "with gradient_checkpointing: the share of decoder layers recomputed, spread evenly "
                "(0.5 = every other layer: about half the activation memory saved for half the "
                "recompute)"})
    fused_optimizer: bool = field(default=True, metadata={
        "help": "AdamW as one fused kernel over each parameter (torch >= 2.4 on CPU) instead of "
                "~10 separate ops per parameter: the same update to float rounding, ~5x less "
                "optimizer time"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0 = only at the end)"})
    save_every: int = field(default=0, metadata={
        "help": "write a resumable checkpoint every N steps (0 = only at the end)"})
    log_every: int = field(default=1, metadata={"help": "log a JSONL line every N steps"})
    seed: int = field(default=0, metadata={"help": "seeds data order, dropout and sampling"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SlmkitError(f"train {name} must be a positive integer, not {getattr(self, name)!r}")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise SlmkitError(f"train {name} must be >= 0, not {getattr(self, name)!r}")
        if not 0 < self.checkpoint_fraction <= 1:
            raise SlmkitError(f"train checkpoint_fraction must be in (0, 1], not {self.checkpoint_fraction!r}")
        if not self.lr > 0:
            raise SlmkitError(f"train lr must be > 0, not {self.lr!r}")
        if self.warmup < 0:
            raise SlmkitError(f"train warmup must be >= 0, not {self.warmup!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise SlmkitError(f"train min_lr_ratio must be in [0, 1], not {self.min_lr_ratio!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise SlmkitError(f"train max_grad_norm must be > 0 or None, not {self.max_grad_norm!r}")

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup * self.steps)) if self.warmup < 1 else int(self.warmup)
