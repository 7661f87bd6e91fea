"""Configs of the weight-quantization methods (one dataclass per method, defaults from the papers)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RTNConfig:
    bits: int = field(default=4, metadata={"help": "bits per weight, 2-8"})
    group_size: int | None = field(default=128, metadata={
        "help": "input columns sharing one scale; None = per output channel; a size that does not "
                "divide a layer's in_features leaves a shorter last group"})
    symmetric: bool = field(default=False, metadata={"help": "symmetric grid (zero point fixed)"})
    skip: list[str] = field(default_factory=list, metadata={
        "help": "roles (q, k, v, o, gate, up, down, ...) or name patterns to leave unquantized"})


@dataclass
class GPTQConfig(RTNConfig):
    damp: float = field(default=0.01, metadata={"help": "fraction of mean(diag H) added to H's diagonal"})
    block_size: int = field(default=128, metadata={"help": "columns per lazy-update block"})
    act_order: bool = field(default=False, metadata={"help": "quantize columns by decreasing diag H"})
    static_groups: bool = field(default=False, metadata={
        "help": "fix group grids from the original weights (keeps groups contiguous with act_order)"})
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
