"""LoRA through peft (not re-implemented): adapters on the decoder linears the architecture
adapter names, trained by the one loop, then merged back into a standard checkpoint.

Quantized models are dequantized first (`slmkit.compress.dequantize`): LoRA's merge writes dense
weights, so train on the dequantized model and quantize again after merging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slmkit.errors import SlmkitError
from slmkit.models.arch import get_arch
from slmkit.runtime.modules import is_quantized


@dataclass
class LoRAConfig:
    """LoRA adapters through peft: rank, scaling, dropout, and which decoder linears get them."""

    r: int = field(default=8, metadata={"help": "adapter rank"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator (update x alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    roles: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"],
                             metadata={"help": "which decoder linears get adapters (adapter-table roles)"})

    def __post_init__(self) -> None:
        if self.r < 1:
            raise SlmkitError(f"LoRA rank must be >= 1, not {self.r}")
        if not 0 <= self.dropout < 1:
            raise SlmkitError(f"LoRA dropout must be in [0, 1), not {self.dropout}")


def target_modules(model, roles: list[str]) -> list[str]:
    """peft `target_modules` (module-name suffixes) for adapter-table roles."""
    paths = get_arch(model).linear_paths()
    unknown = sorted(set(roles) - set(paths))
    if unknown:
        raise SlmkitError(f"LoRA roles {unknown} do not exist in {model.config.model_type} "
                          f"(it has: {', '.join(paths)})")
    return sorted({paths[r].split(".")[-1] for r in roles})


def add_lora(model, cfg: LoRAConfig | None = None):
    """The model wrapped by peft with trainable adapters (base weights frozen)."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        raise SlmkitError("LoRA needs peft: pip install 'slmkit[train]' (or pip install peft)") from None
    cfg = cfg or LoRAConfig()
    if is_quantized(model):
        raise SlmkitError("LoRA on a quantized model: dequantize it first "
                          "(slmkit.compress.dequantize(model)), train, merge, then quantize again")
    pc = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=target_modules(model, cfg.roles), task_type="CAUSAL_LM")
    return get_peft_model(model, pc)


def merge_lora(peft_model):
    """Adapters folded into the base weights -> the plain transformers model."""
    if not hasattr(peft_model, "merge_and_unload"):
        raise SlmkitError("merge_lora expects a model returned by add_lora")
    return peft_model.merge_and_unload()
