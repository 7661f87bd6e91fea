"""Low-rank factorization on a model: every targeted decoder linear becomes a `LowRankLinear`.

Saved models keep the factors (`NAME.down.weight`, `NAME.up.weight`) and list them in
`slmkit.json` under "lowrank"; `slmkit.models.load(folder)` rebuilds them. For a checkpoint that
plain `from_pretrained` loads, `merge_lowrank(model)` multiplies the factors back into dense
weights first (same outputs, no size saving).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from slmkit.compress.calibrate import CalibDtype, calib_dtype_field, sequential
from slmkit.compress.lowrank.svd import rank_for, svd_factors
from slmkit.compress.smooth import ActivationStats
from slmkit.compress.targets import Target, all_targets, layer_targets
from slmkit.errors import SlmkitError
from slmkit.runtime.lowrank import Factorized, LowRankLinear


@dataclass
class SVDConfig:
    """Truncated SVD of each targeted linear: the share of parameters (or the rank) the factors keep."""

    keep: float = field(default=0.8, metadata={
        "help": "fraction of each targeted linear's parameters the two factors keep (0.8 = 20% "
                "fewer); ignored when `rank` is set"})
    rank: int | None = field(default=None, metadata={"help": "one rank for every targeted linear"})
    skip: list[str] = field(default_factory=list, metadata={
        "help": "roles (q, k, v, o, gate, up, down, ...) or name patterns to leave dense"})

    def __post_init__(self) -> None:
        if not 0 < self.keep < 1:
            raise SlmkitError(f"keep must be in (0, 1), not {self.keep!r}")
        if self.rank is not None and self.rank < 1:
            raise SlmkitError(f"rank must be >= 1, not {self.rank!r}")


@dataclass
class ASVDConfig(SVDConfig):
    """Activation-aware SVD: SVD's settings plus the activation exponent and the calibration passes."""

    alpha: float = field(default=0.5, metadata={
        "help": "input channels are weighted by mean|x|^alpha before the SVD (0 = plain SVD)"})
    batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
    calib_dtype: CalibDtype = calib_dtype_field()


def _factorize(model, t: Target, cfg: SVDConfig, scale: torch.Tensor | None,
               done: list[Factorized]) -> None:
    lin = t.module
    w = t.weight()
    out_f, in_f = w.shape
    r = cfg.rank if cfg.rank is not None else rank_for(out_f, in_f, cfg.keep)
    if r < 1 or r * (out_f + in_f) >= out_f * in_f:
        return  # factors would not be smaller than the dense weight
    B, A = svd_factors(w, min(r, min(w.shape)), scale)
    bias = getattr(lin, "bias", None)
    new = LowRankLinear.from_factors(B, A, None if bias is None else bias.detach(), w.dtype)
    model.set_submodule(t.name, new)
    done.append(Factorized(t.name, new.rank, in_f, out_f, bias is not None))


def apply_svd(model, cfg: SVDConfig, calib=None) -> list[Factorized]:
    done: list[Factorized] = []
    for t in _checked_targets(model, cfg):
        _factorize(model, t, cfg, None, done)
    return done


def apply_asvd(model, cfg: ASVDConfig, calib) -> list[Factorized]:
    if calib is None:
        raise SlmkitError("ASVD needs calibration data: token ids [n, length] (see slmkit.data.calibration_set)")
    _checked_targets(model, cfg)
    done: list[Factorized] = []

    def on_layer(index, layer, run):
        targets = layer_targets(model, index, tuple(cfg.skip))
        with ActivationStats({t.name: t.module for t in targets}) as st:
            run()
        for t in targets:
            s = st.stats[t.name]
            mean_abs = s.abs_sum / max(s.tokens, 1)
            _factorize(model, t, cfg, mean_abs.clamp(min=1e-6) ** cfg.alpha, done)

    sequential(model, calib, on_layer, batch_size=cfg.batch_size, description="ASVD",
               dtype=cfg.calib_dtype)
    return done


def _checked_targets(model, cfg: SVDConfig) -> list[Target]:
    targets = all_targets(model, tuple(cfg.skip))
    if not targets:
        raise SlmkitError("no linear layers left to factorize (check `skip`)")
    if any(t.conv1d for t in targets):
        raise SlmkitError(f"{model.config.model_type}: low-rank factorization of Conv1D layers "
                          "(gpt2) is not supported")
    return targets


def merge_lowrank(model) -> None:
    """Replace every LowRankLinear by a dense nn.Linear holding up @ down (in place)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LowRankLinear):
            dense = torch.nn.Linear(m.in_features, m.out_features, bias=m.up.bias is not None)
            with torch.no_grad():
                dense.weight.copy_(m.dense_weight())
                if m.up.bias is not None:
                    dense.bias.copy_(m.up.bias)
            model.set_submodule(name, dense.to(m.up.weight.dtype))
    model._slmkit_lowrank = []


def records(done: list[Factorized]) -> list[dict]:
    return [asdict(f) for f in done]
