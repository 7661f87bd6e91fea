"""Configs of the unstructured pruning methods (one dataclass per method, defaults from the papers).

`sparsity` is the fraction of each pruned matrix's weights set to zero. With an N:M pattern the
sparsity is 1 - N/M; leave `sparsity` unset (None) or give that exact value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from slmkit.compress.calibrate import CalibDtype, calib_dtype_field
from slmkit.compress.prune.nm import nm_sparsity, parse_nm
from slmkit.compress.quantize.gptq import check_damp
from slmkit.errors import SlmkitError

DEFAULT_SPARSITY = 0.5
MaskScope = Literal["block", "row_global"]
MASK_SCOPES = ("block", "row_global")


@dataclass
class PruneConfig:
    """Fields every unstructured pruning method shares."""
    sparsity: float | None = field(default=None, metadata={
        "help": "fraction of each pruned matrix's weights set to zero, in [0, 1); "
                "None = 0.5, or 1 - N/M with `nm`"})
    nm: str | None = field(default=None, metadata={
        "help": "semi-structured pattern 'N:M': at most N nonzeros in every M consecutive input "
                "weights of a row ('2:4', '4:8'); None = unstructured"})
    owl: bool = field(default=False, metadata={
        "help": "OWL: non-uniform per-layer sparsity, lower in layers with more activation "
                "outliers (mean stays `sparsity`); needs calibration data; not with `nm`"})
    owl_m: float = field(default=5.0, metadata={
        "help": "OWL's M: an entry of |W| * ||X|| is an outlier above M x its layer's mean"})
    owl_lambda: float = field(default=0.08, metadata={
        "help": "OWL's lambda: layer sparsities spread over 2 * lambda (max - min) around the "
                "mean `sparsity`, as the paper's [sparsity - lambda, sparsity + lambda]"})
    skip: list[str] = field(default_factory=list, metadata={
        "help": "roles (q, k, v, o, gate, up, down, ...) or name patterns to leave dense"})
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
    calib_dtype: CalibDtype = calib_dtype_field()

    def __post_init__(self) -> None:
        """Refuse bad values when the config is made (CLI, recipes, Python alike), before any work."""
        check_config(self)


@dataclass
class MagnitudeConfig(PruneConfig):
    """Magnitude: smallest |W| per matrix (calibration data only for `owl`)."""


@dataclass
class WandaConfig(PruneConfig):
    """Wanda: |W| x input-feature norm, compared per output row (needs calibration data)."""


@dataclass
class SparseGPTConfig(PruneConfig):
    """SparseGPT: OBS mask selection and weight reconstruction (needs calibration data).

    Two defaults differ from the paper (measured in benchmarks/history/pruning.md):
    - `mask_scope="row_global"`: masks are chosen within each output row, as Wanda compares,
      instead of over the whole column block (which can strip some rows of a matrix far more
      than others). Each row loses its share of the matrix's count, split over the column blocks
      by the row's initial costs; each block's mask is still chosen at its start on the updated
      weights.
    - `damp=0.1`, as GPTQ's, not the paper's 0.01: less of a fit to the calibration inputs.
    `mask_scope="block", damp=0.01` reproduces the paper and llm-compressor."""
    block_size: int = field(default=128, metadata={
        "help": "columns per lazy-update block; unstructured masks are chosen per block "
                "(a multiple of M with `nm`)"})
    damp: float = field(default=0.1, metadata={"help": "fraction of mean(diag H) added to H's diagonal"})
    mask_scope: MaskScope = field(default="row_global", metadata={
        "help": "unstructured masks compare costs within each row, the row's count split over the "
                "column blocks by its initial costs ('row_global'), or over the whole block ('block': "
                "the paper's and llm-compressor's choice, to reproduce them)"})


def check_config(cfg: PruneConfig) -> tuple[float, tuple[int, int] | None]:
    """Validate `cfg` before any work; returns (target sparsity, (N, M) or None)."""
    nm = parse_nm(cfg.nm)
    s = cfg.sparsity
    if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1):
        raise SlmkitError(f"sparsity must be a number in [0, 1) (the fraction of weights set to "
                          f"zero), not {s!r}")
    if nm is not None:
        implied = nm_sparsity(*nm)
        if s is not None and abs(s - implied) > 1e-9:
            raise SlmkitError(f"nm={cfg.nm!r} prunes {implied:g} of the weights, but sparsity={s}; "
                              f"leave sparsity unset or set it to {implied:g}")
        s = implied
        if cfg.owl:
            raise SlmkitError("OWL sets a different sparsity per layer, which an N:M pattern "
                              "(fixed at 1 - N/M everywhere) cannot follow: use owl=False or nm=None")
    s = DEFAULT_SPARSITY if s is None else float(s)
    if cfg.owl and (not cfg.owl_m > 0 or not 0 <= cfg.owl_lambda < 1):
        raise SlmkitError(f"OWL needs owl_m > 0 and owl_lambda in [0, 1), "
                          f"not {cfg.owl_m} and {cfg.owl_lambda}")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise SlmkitError(f"batch_size must be a positive integer, not {cfg.batch_size!r}")
    if isinstance(cfg, SparseGPTConfig):
        if not isinstance(cfg.block_size, int) or cfg.block_size < 1:
            raise SlmkitError(f"block_size must be a positive integer, not {cfg.block_size!r}")
        if nm is not None and cfg.block_size % nm[1]:
            raise SlmkitError(f"block_size ({cfg.block_size}) must be a multiple of M={nm[1]}")
        check_damp(cfg.damp, "SparseGPT")
        if cfg.mask_scope not in MASK_SCOPES:
            raise SlmkitError(f"SparseGPT mask_scope must be one of {MASK_SCOPES}, not {cfg.mask_scope!r}")
    return s, nm
