"""The evaluation task registry and `evaluate()`, which runs several tasks on one model.

Every task is (config dataclass, function(model, tokenizer, config) -> metrics dict). The CLI
builds its options from these same dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slmkit.data.sources import load_text
from slmkit.errors import SlmkitError
from slmkit.eval.generation import GenConfig, generation, load_records
from slmkit.eval.mc import MCConfig, load_items, multiple_choice
from slmkit.eval.memory import disk_bytes, param_count
from slmkit.eval.perplexity import PerplexityConfig, perplexity
from slmkit.eval.speed import SpeedConfig, speed
from slmkit.registry import Registry


@dataclass
class PPLTaskConfig(PerplexityConfig):
    data: str = field(default="default", metadata={
        "help": "text to measure: default, a file/folder, file.jsonl, hf:NAME[:CONFIG]"})
    text_field: str = field(default="text", metadata={"help": "jsonl/dataset field holding the text"})
    split: str = field(default="test", metadata={"help": "dataset split (hf: data)"})


def run_ppl(model, tokenizer, cfg: PPLTaskConfig) -> dict:
    return perplexity(model, tokenizer, load_text(cfg.data, field=cfg.text_field, split=cfg.split), cfg)


def run_mc(model, tokenizer, cfg: MCConfig) -> dict:
    if not cfg.path:
        raise SlmkitError("the mc task needs a jsonl file: --mc-path FILE")
    out = multiple_choice(model, tokenizer, load_items(cfg.path, cfg.limit), cfg)
    out["path"] = cfg.path
    return out


def run_gen(model, tokenizer, cfg: GenConfig) -> dict:
    if not cfg.path:
        raise SlmkitError("the gen task needs a jsonl file: --gen-path FILE")
    out = generation(model, tokenizer, load_records(cfg.path, cfg), cfg)
    out["path"] = cfg.path
    return out


TASKS = Registry("evaluation task")
TASKS.add("ppl", PPLTaskConfig, run_ppl, "perplexity, protocols (i) window and (ii) rolling")
TASKS.add("mc", MCConfig, run_mc, "zero-shot multiple choice from jsonl")
TASKS.add("gen", GenConfig, run_gen, "generation + answer extraction + exact match")
TASKS.add("speed", SpeedConfig, speed, "prefill/decode tok/s, TTFT, latency, memory")


def model_info(model) -> dict:
    src = getattr(model, "_slmkit_source", None) or {}
    mb = disk_bytes(model)
    return {"source": src.get("source"), "model_type": getattr(model.config, "model_type", None),
            "params": param_count(model), "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "disk_mb": None if mb is None else mb / 2**20}


def evaluate(model, tokenizer, tasks: dict[str, object]) -> dict:
    """Run `{task name: config}` in order -> `{"model": info, task name: metrics, ...}`."""
    out = {"model": model_info(model)}
    for name, cfg in tasks.items():
        entry = TASKS.get(name)
        out[name] = entry.fn(model, tokenizer, cfg if cfg is not None else entry.config())
    return out
