"""Bridge to lm-evaluation-harness (optional extra: pip install 'slmkit[lm-eval]').

`SlmkitLM` is lm-eval's own `HFLM` constructed from a model slmkit loads, registered in lm-eval's
model registry as "slmkit". lm-eval 0.4.x discovers models only from its built-in table (no plugin
entry points), so the registration happens when this module's `register()` runs:

* Python: `run_lm_eval(model, tok, ["task"])`, or `register()` then
  `lm_eval.simple_evaluate(model="slmkit", model_args="path=...")`.
* Shell: `slmkit lm-eval --model slmkit --model_args path=default --tasks ...` takes exactly
  lm-eval's own arguments (it registers, then runs lm-eval's CLI); or
  `slmkit eval MODEL --lm-eval-tasks ...`.
"""

from __future__ import annotations

import sys

from slmkit.errors import SlmkitError
from slmkit.models import load

_REGISTERED = None


def _require():
    try:
        import lm_eval  # noqa: F401
        import lm_eval.models  # noqa: F401  (fill lm-eval's own registry before adding ours)
        from lm_eval.api.registry import model_registry, register_model
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise SlmkitError(f"the lm-eval bridge needs lm-evaluation-harness and its dependencies "
                          f"({e}): pip install 'slmkit[lm-eval]'") from None
    return model_registry, register_model, HFLM


def register():
    """Register `SlmkitLM` as lm-eval model "slmkit" (idempotent) and return the class."""
    global _REGISTERED
    if _REGISTERED is not None:
        return _REGISTERED
    model_registry, register_model, HFLM = _require()

    class SlmkitLM(HFLM):
        """lm-eval's HFLM over a model loaded (or already held) by slmkit.

        model_args: path= (hub id, folder, .gguf, default), dtype= (auto/float32/bfloat16), plus
        any HFLM argument (batch_size, max_length, ...)."""

        def __init__(self, path: str = "default", dtype: str = "auto", pretrained=None,
                     tokenizer=None, **kwargs):
            if pretrained is None or isinstance(pretrained, str):
                pretrained, tokenizer = load(pretrained or path, dtype)
            kwargs.pop("device", None)
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, device="cpu", **kwargs)

    if "slmkit" not in model_registry:
        register_model("slmkit")(SlmkitLM)
    _REGISTERED = SlmkitLM
    return SlmkitLM


def wrap(model, tokenizer, **kwargs):
    """An lm-eval `LM` over an already-loaded model (no reload)."""
    return register()(pretrained=model, tokenizer=tokenizer, **kwargs)


def run_lm_eval(model, tokenizer, tasks: list[str], *, limit: int | None = None,
                batch_size: int = 1, include_path: str | None = None, **kwargs) -> dict:
    """Run lm-eval tasks on a loaded model -> lm-eval's per-task results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = wrap(model, tokenizer, batch_size=batch_size, **kwargs)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit,
                                      task_manager=TaskManager(include_path=include_path))
    except (ConnectionError, OSError) as e:
        raise SlmkitError(f"lm-eval could not load the data for {tasks}: {e}. Offline, only "
                          "tasks whose datasets are cached or local load") from None
    except KeyError as e:
        raise SlmkitError(f"lm-eval does not know task {e}; list them with `lm-eval ls tasks`") from None
    return out["results"]


def cli_passthrough(args: list[str]) -> int:
    """Run lm-eval's own command line (same arguments) with `--model slmkit` registered."""
    register()
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = saved
    return 0
