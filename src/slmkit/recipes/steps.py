"""One path from a compression step's config to its output, shared by the commands
(`slmkit quantize | prune | lowrank`) and the recipe stages of the same kinds.

    step = make_step("quantize", "gptq", {"bits": 4, "group_size": 64})   # validated config
    report, out = run_step("default", step, "out/w4", Calibration(n=64))

`make_step` turns plain options (a recipe stage's mapping, the options given on a command line)
into the method's config; `check_step` runs the method's cheap checks on the loaded model;
`apply_step` applies it (the recipe runner calls this with the run's shared calibration set);
`run_step` is load -> check -> calibrate -> apply -> save with a report, every input checked
(output path, calibration sources, config) before the model is loaded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slmkit.compress.api import STEP_KINDS
from slmkit.compress.lowrank.apply import merge_lowrank
from slmkit.data import Calibration, embedded_text
from slmkit.errors import SlmkitError
from slmkit.eval.memory import max_rss_bytes, param_count
from slmkit.eval.perplexity import PerplexityConfig, window_perplexity
from slmkit.generate.calibration import build_calibration_with_provenance
from slmkit.models import load, save
from slmkit.models.dtype import resolve_dtype
from slmkit.models.save import check_output
from slmkit.runtime.checkpoint import quantized_modules

# options a step takes besides its method's config fields, per kind
STEP_OPTIONS = {"prune": {"target_params"}, "lowrank": {"merge"}, "quantize": set()}


@dataclass
class Step:
    """A compression step: its kind, method, validated config, and (lowrank) whether the factors
    are multiplied back into dense weights."""

    kind: str
    method: str
    config: Any
    merge: bool = False

    @property
    def entry(self):
        return STEP_KINDS[self.kind].registry.get(self.method)

    @property
    def needs_calibration(self) -> bool:
        return self.entry.needs_calibration(self.config)


def make_step(kind: str, method: str | None, options: dict | None = None) -> Step:
    """A validated step from plain options: the method's config fields, plus `target_params`
    (prune: the size of the result, another way to say `target`) and `merge` (lowrank)."""
    if kind not in STEP_KINDS:
        raise SlmkitError(f"unknown step kind {kind!r}; allowed: {', '.join(STEP_KINDS)}")
    registry = STEP_KINDS[kind].registry
    if method not in registry:
        raise SlmkitError(f"method {method!r} unknown for {kind}; allowed: {', '.join(registry.names())}")
    o = dict(options or {})
    merge = bool(o.pop("merge", False))
    if o.get("target_params") is not None:
        o["target"] = o.pop("target_params")
    o.pop("target_params", None)
    cls = registry.get(method).config
    unknown = sorted(set(o) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise SlmkitError(f"{unknown[0]!r} is not an option of {kind} method {method!r}; its options: "
                          f"{', '.join(sorted(f.name for f in dataclasses.fields(cls)))}")
    return Step(kind, method, cls(**o), merge)


def check_step(step: Step, model) -> None:
    """The method's checks of this model and config: no heavy work, before any calibration."""
    STEP_KINDS[step.kind].check(model, step.config)


def apply_step(model, step: Step, calib: torch.Tensor | None) -> dict:
    """Apply `step` to `model` in place -> a short summary for reports."""
    if step.needs_calibration and calib is None:
        raise SlmkitError(f"{step.kind} method {step.method!r} needs calibration data")
    report = STEP_KINDS[step.kind].apply(model, step.config, calib)
    if step.kind == "quantize":
        kernels: dict[str, int] = {}
        for m in quantized_modules(model).values():
            kernels[type(m).__name__] = kernels.get(type(m).__name__, 0) + 1
        return {"method": step.method, "kernels": kernels}
    if step.kind == "lowrank":
        if step.merge:
            merge_lowrank(model)
        return {"params_before": report["params_before"], "params_after": report["params_after"],
                "layers": len(report["layers"]), "merged": step.merge}
    keep = ("total", "params_before", "params_after", "removed_layers", "kind", "bytes_before",
            "bytes_after", "fraction_removed", "config_sizes")
    return {k: report[k] for k in keep if k in report}


def _ppl(model, tok) -> float:
    return window_perplexity(model, tok, embedded_text("eval"), PerplexityConfig())["token_perplexity"]


def run_step(source: str, step: Step, out: str | Path, calibration: Calibration | None = None, *,
             dtype: str = "float32", save_dtype: str = "bfloat16", overwrite: bool = False,
             measure_ppl: bool = False, log: Callable[[str], None] = print) -> tuple[dict, Path]:
    """Load `source`, check, calibrate (when the method needs it), apply `step`, save to `out`
    with the report in slmkit.json -> (report, output folder)."""
    check_output(out, overwrite)
    torch_save_dtype = resolve_dtype(save_dtype)
    calibration = calibration or Calibration()
    if step.needs_calibration:
        calibration.check()
    model, tok = load(source, dtype)
    check_step(step, model)
    report: dict = {"method": step.method, "params_before": param_count(model)}
    if measure_ppl:
        report["ppl_before"] = _ppl(model, tok)
    calib = None
    if step.needs_calibration:
        c = calibration
        calib, report["calibration"] = build_calibration_with_provenance(
            model, tok, c.spec, n=c.n, length=c.length, seed=c.seed)
    t0 = time.perf_counter()
    report["result"] = apply_step(model, step, calib)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["params_after"] = param_count(model)
    if measure_ppl:
        report["ppl_after"] = _ppl(model, tok)
    report["peak_rss_mb"] = round(max_rss_bytes() / 2 ** 20, 1)
    model.to(torch_save_dtype)
    with torch.no_grad():
        folder = save(model, tok, out, {"report": report}, overwrite=overwrite)
    report["weights_mb"] = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2 ** 20
    return report, folder
