"""Configs of the weight-quantization methods (one dataclass per method, defaults from the papers)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from slmkit.compress.calibrate import CalibDtype, calib_dtype_field
from slmkit.compress.quantize.gptq import check_clip_floor, check_damp
from slmkit.errors import SlmkitError
from slmkit.runtime.embedding import embed_grid
from slmkit.runtime.ggml_blocks import BLOCK_TYPES, BY_GRID, block_type
from slmkit.runtime.qweight import GGUF, GGUF_K, check_bits

if TYPE_CHECKING:
    from slmkit.compress.targets import Target

GRID_FIELDS = ("bits", "group_size", "symmetric", "gguf_type")


@dataclass
class RTNConfig:
    """Round to nearest: the grid, which linears to skip or quantize differently, and optional head and
    embedding bits."""

    bits: int = field(default=4, metadata={"help": "bits per weight, 2-8"})
    group_size: int | None = field(default=128, metadata={
        "help": "input columns sharing one scale; None = per output channel; a size that does not "
                "divide a layer's in_features leaves a shorter last group"})
    symmetric: bool = field(default=False, metadata={"help": "symmetric grid (zero point fixed)"})
    gguf_type: str | None = field(default=None, metadata={
        "help": "quantize onto a GGUF block type (q4_0, q5_0, q8_0, or the K-quants q4_k, q5_k, "
                "q6_k for rows of whole 256-weight blocks: its bits, group size and grid in place of "
                "bits, group_size and symmetric), so `slmkit export gguf` writes the integers and "
                "scales unchanged"})
    gguf_bpw: float | None = field(default=None, metadata={
        "help": "choose each linear's GGUF block type from gguf_types by measured sensitivity "
                "(Fisher-weighted output error on the calibration text), the linears averaging at "
                "most this many bits per weight (e.g. 5.5 = Q5_0's size); needs calibration text, "
                "and replaces gguf_type and overrides"})
    gguf_types: list[str] = field(default_factory=lambda: ["q4_0", "q4_k", "q5_0", "q5_k", "q6_k", "q8_0"],
                                  metadata={"help": "the block types gguf_bpw chooses from"})
    skip: list[str] = field(default_factory=list, metadata={
        "help": "roles (q, k, v, o, gate, up, down, ...) or name patterns to leave unquantized"})
    overrides: dict[str, dict] = field(default_factory=dict, metadata={
        "help": "per-module grids: role or name pattern -> {bits, group_size, symmetric} or "
                "{gguf_type}, e.g. {'down': {'bits': 8}}; the first matching entry wins"})
    head_bits: int | None = field(default=None, metadata={
        "help": "also quantize the output head (lm_head) per output channel, symmetric, to this "
                "many bits (5-8; 8 is near-lossless and takes ~30% off the head's decode time); a head "
                "tied to the input embeddings is untied first (the embeddings stay as they are)"})
    embed_bits: int | None = field(default=None, metadata={
        "help": "also quantize the input embedding table (RTN; 8 = per token row, 4 = groups of "
                "32, as GGUF q4_0): for small models the table is 20-60% of the bytes; a tied head "
                "is untied first and stays float unless head_bits is set"})

    def __post_init__(self) -> None:
        """Refuse out-of-range grids when the config is made (CLI, recipes, Python alike)."""
        if self.gguf_type is not None:
            self.bits, self.group_size, self.symmetric = gguf_grid(self.gguf_type)
        check_bits(self.bits, self.group_size)
        if self.gguf_bpw is not None:
            if not isinstance(self.gguf_bpw, (int, float)) or isinstance(self.gguf_bpw, bool) \
                    or not 4 <= self.gguf_bpw <= 8.5:
                raise SlmkitError(f"gguf_bpw must be a number of bits per weight in [4, 8.5] (Q4_0's "
                                  f"4.5 to Q8_0's 8.5), not {self.gguf_bpw!r}")
            if self.gguf_type is not None or self.overrides:
                raise SlmkitError("gguf_bpw chooses every linear's block type: drop gguf_type and "
                                  "overrides, or drop gguf_bpw")
            for name in self.gguf_types:
                gguf_grid(name)
        if self.head_bits is not None and not (isinstance(self.head_bits, int) and 5 <= self.head_bits <= 8):
            raise SlmkitError(f"head_bits must be 5-8 (per-channel int8 kernel) or None, not {self.head_bits!r}")
        if self.embed_bits is not None:
            embed_grid(self.embed_bits, 32)


@dataclass
class GPTQConfig(RTNConfig):
    """GPTQ on RTN's grid: act-order with static groups, damp 0.1, and a clip search whose column
    weights are diag H plus a floor (`clip_floor`), so inputs the calibration text leaves quiet
    are not clipped for free. These defaults beat RTN on both evaluation texts on SmolLM2 and
    Qwen2.5-Coder-0.5B (benchmarks/history/quantization.md)."""

    damp: float = field(default=0.1, metadata={"help": "fraction of mean(diag H) added to H's diagonal"})
    block_size: int = field(default=128, metadata={"help": "columns per lazy-update block"})
    act_order: bool = field(default=True, metadata={"help": "quantize columns by decreasing diag H"})
    static_groups: bool = field(default=True, metadata={
        "help": "fix group grids from the original weights (keeps groups contiguous with act_order; "
                "integer kernels and checkpoints need that)"})
    clip_search: bool = field(default=True, metadata={
        "help": "shrink each group's range to the clipping that minimises its rounding error "
                "weighted by diag(H) (floored, see clip_floor), instead of plain min/max"})
    clip_floor: float = field(default=1.0, metadata={
        "help": "the clip search weighs column j by diag(H)_j + clip_floor * mean(diag H): above 0, "
                "weights of inputs the calibration text leaves quiet are not clipped for free"})
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
    calib_dtype: CalibDtype = calib_dtype_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_damp(self.damp, "GPTQ")
        check_clip_floor(self.clip_floor)


def check_overrides(cfg) -> None:
    """Validate `cfg.overrides` before any work: known keys, sane values."""
    for pattern, values in cfg.overrides.items():
        if not isinstance(values, dict) or not values:
            raise SlmkitError(f"override {pattern!r} must map to a non-empty dict of "
                              f"{', '.join(GRID_FIELDS)}, not {values!r}")
        unknown = set(values) - set(GRID_FIELDS)
        if unknown:
            raise SlmkitError(f"override {pattern!r}: unknown setting(s) {sorted(unknown)}; "
                              f"allowed: {', '.join(GRID_FIELDS)}")
        if "gguf_type" in values:
            gguf_grid(values["gguf_type"])
        check_bits(values.get("bits", cfg.bits), values.get("group_size", cfg.group_size))


def gguf_grid(name) -> tuple[int, int, str]:
    """(bits, group_size, symmetric) of a GGUF block type's grid."""
    if not isinstance(name, str):
        raise SlmkitError(f"gguf_type must be one of {', '.join(BLOCK_TYPES)}, not {name!r}")
    t = block_type(name)
    return t.bits, t.group, GGUF_K if t.mins else GGUF


def gguf_name(bits: int, symmetric) -> str:
    """The GGUF block type (q4_k, ...) of a GGUF grid's bits and `symmetric` value."""
    return BY_GRID[(bits, symmetric == GGUF_K)]


def grid_for(cfg, target: "Target") -> tuple[int, int | None, bool]:
    """(bits, group_size, symmetric) for one target: the config's, or its first matching override."""
    for pattern, values in cfg.overrides.items():
        if pattern == target.role or fnmatch.fnmatch(target.name, pattern):
            if "gguf_type" in values:
                return gguf_grid(values["gguf_type"])
            return (values.get("bits", cfg.bits), values.get("group_size", cfg.group_size),
                    values.get("symmetric", cfg.symmetric))
    return cfg.bits, cfg.group_size, cfg.symmetric
