"""Recipe files: YAML whose every option is a field of the same config dataclasses the Python API
and the CLI use, validated with the file, line and allowed values in every error.

    name: default
    model: default                 # hub id, folder, .gguf, or default
    calibration: {spec: "embedded@0.5,self@0.5", n: 128, length: 512}
    evaluation: {ppl_tokens: 25600, texts: [default, ../shared/data/austen_emma.txt], ...}
    stages:
      - prune: {method: width, target: 0.25}
      - distill: {teacher: source, steps: 100, lr: 1e-4, data: "default:calib"}
      - quantize: {method: gptq, bits: 4, group_size: 64}
      - export: {type: q4_0}

Stage kinds: prune, quantize, lowrank (`slmkit.compress.api.STEP_KINDS`; run by `slmkit.recipes.steps`),
distill (DistillConfig + TrainConfig fields, teacher, data; `objective: blackbox` with BlackboxConfig's
fields, `objective: cached` with CachedConfig's), finetune (TrainConfig fields, data
or sft, lora), export (GGUF type), eval (extra evaluation only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from slmkit.compress.api import STEP_KINDS
from slmkit.data.calib import Calibration
from slmkit.distill.objectives import DistillConfig
from slmkit.distill.teacher_data import KINDS, BlackboxConfig, CachedConfig
from slmkit.errors import SlmkitError
from slmkit.recipes.steps import STEP_OPTIONS, make_step
from slmkit.train import TrainConfig

STAGE_KINDS = ("prune", "quantize", "lowrank", "distill", "finetune", "export", "eval")
TRAIN_DATA_KEYS = {"data": "default:calib", "sft": None, "seq_len": 512, "max_rows": None,
                   "eval_data": None}


@dataclass
class Evaluation:
    """What is measured on the source model and after every stage."""

    texts: list[str] = field(default_factory=lambda: ["default"])   # protocol (i) on each
    ppl_tokens: int = 25600            # leading tokens of each text (0 = all)
    rolling: bool = True               # protocol (ii) (word ppl, bits/byte) on the first text
    mc: str | None = None              # multiple-choice jsonl
    mc_limit: int | None = None
    speed_prompt: int = 128
    speed_new_tokens: int = 64
    speed_repeats: int = 2
    llama_cpp_rounds: int = 3          # GGUF outputs beside llama.cpp's own quantizations, all measured
    #                                    by llama.cpp (slmkit[llamacpp]); decode taken in turn over this
    #                                    many rounds; 0 = no llama.cpp section
    llama_cpp_tokens: int | None = None  # ppl_tokens of the llama.cpp rows (None: ppl_tokens); the
    #                                    rows compare with each other on these windows


@dataclass
class Stage:
    """One stage as written: its kind, its options, and its line in the file."""

    kind: str
    options: dict[str, Any]
    line: int | None = None

    @property
    def method(self) -> str | None:
        return self.options.get("method")


@dataclass
class Recipe:
    """A validated recipe: the source model, the stages in order, calibration and evaluation settings,
    and its file."""

    name: str
    model: str
    stages: list[Stage]
    calibration: Calibration = field(default_factory=Calibration)
    evaluation: Evaluation = field(default_factory=Evaluation)
    path: str | None = None


# ---- YAML with line numbers -------------------------------------------------------------------

def _to_python(node, lines: dict, path: tuple):
    import yaml

    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = k.value
            out[key] = _to_python(v, lines, path + (key,))
            lines[path + (key,)] = k.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, lines, path + (i,)) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _where(src: str, lines: dict, path: tuple) -> str:
    p = path
    while p and p not in lines:
        p = p[:-1]
    dotted = ".".join(f"[{x}]" if isinstance(x, int) else str(x) for x in path).replace(".[", "[")
    return f"{src}:{lines.get(p, '?')}: {dotted or 'top level'}"


def _check_fields(cls, values: dict, src: str, lines: dict, path: tuple, extra: set[str] = frozenset()):
    allowed = {f.name for f in dataclasses.fields(cls)} | set(extra)
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise SlmkitError(f"{_where(src, lines, path + (unknown[0],))}: unknown option {unknown[0]!r}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _build(cls, values: dict, src: str, lines: dict, path: tuple):
    _check_fields(cls, values, src, lines, path)
    try:
        return cls(**values)
    except (SlmkitError, TypeError, ValueError) as e:
        raise SlmkitError(f"{_where(src, lines, path)}: {e}") from None


def stage_configs(stage: Stage) -> dict:
    """The config objects a stage will run with (validates them)."""
    o = dict(stage.options)
    if stage.kind in STEP_KINDS:
        step = make_step(stage.kind, o.pop("method", None), o)
        return {"method": step.method, "config": step.config, "step": step}
    if stage.kind in ("distill", "finetune"):
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        kd_fields = {f.name for f in dataclasses.fields(DistillConfig)}
        train = {k: v for k, v in o.items() if k in train_fields}
        out = {"train": TrainConfig(**train),
               "data": {k: o.get(k, d) for k, d in TRAIN_DATA_KEYS.items()}}
        if stage.kind == "distill":
            out["objective"] = o.get("objective", "logits")
            if out["objective"] not in KINDS:
                raise SlmkitError(f"distill objective {out['objective']!r} unknown; allowed: {', '.join(KINDS)}")
            out["kd"] = DistillConfig(**{k: v for k, v in o.items() if k in kd_fields})
            out["blackbox"] = BlackboxConfig(**{k: v for k, v in o.items() if k in names(BlackboxConfig)})
            out["cached"] = CachedConfig(**{k: v for k, v in o.items() if k in names(CachedConfig)})
            out["cached_text"] = "data" in o   # cached: text rows join the teacher's only when asked
            if out["objective"] == "blackbox":
                out["blackbox"].check_inputs()
            out["teacher"] = o.get("teacher", "source")
        else:
            out["lora"] = o.get("lora")
        return out
    if stage.kind == "export":
        t = o.get("type", "q8_0")
        if t not in ("f32", "f16", "bf16", "q8_0", "q4_0"):
            raise SlmkitError(f"export type {t!r} unknown; allowed: f32, f16, bf16, q8_0, q4_0")
        return {"type": t}
    return {}


def names(cls) -> set[str]:
    """The field names of a config dataclass."""
    return {f.name for f in dataclasses.fields(cls)}


def _allowed_stage_keys(kind: str, method: str | None) -> set[str]:
    if kind in STEP_KINDS:
        reg = STEP_KINDS[kind].registry
        return {"method"} | STEP_OPTIONS[kind] | (names(reg.get(method).config) if method in reg else set())
    if kind == "distill":
        return (names(TrainConfig) | names(DistillConfig) | names(BlackboxConfig) | names(CachedConfig)
                | set(TRAIN_DATA_KEYS) | {"teacher", "objective"})
    if kind == "finetune":
        return names(TrainConfig) | set(TRAIN_DATA_KEYS) | {"lora"}
    if kind == "export":
        return {"type"}
    return set()


def parse_recipe(text: str, src: str = "<recipe>") -> Recipe:
    """Parse and validate recipe YAML; `src` names the text in error messages."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise SlmkitError(f"{src}: not valid YAML: {e}") from None
    if root is None:
        raise SlmkitError(f"{src}: the recipe is empty")
    lines: dict = {}
    data = _to_python(root, lines, ())
    if not isinstance(data, dict):
        raise SlmkitError(f"{src}: a recipe is a mapping with name, model and stages")
    top = {"name", "model", "stages", "calibration", "evaluation"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise SlmkitError(f"{_where(src, lines, (unknown[0],))}: unknown key {unknown[0]!r}; "
                          f"allowed: {', '.join(sorted(top))}")
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise SlmkitError(f"{_where(src, lines, ('stages',))}: needs a non-empty list of stages")
    stages = []
    for i, item in enumerate(raw_stages):
        path = ("stages", i)
        if not isinstance(item, dict) or len(item) != 1:
            raise SlmkitError(f"{_where(src, lines, path)}: each stage is one `kind: {{options}}` "
                              f"mapping; kinds: {', '.join(STAGE_KINDS)}")
        kind, options = next(iter(item.items()))
        if kind not in STAGE_KINDS:
            raise SlmkitError(f"{_where(src, lines, path + (kind,))}: unknown stage {kind!r}; "
                              f"allowed: {', '.join(STAGE_KINDS)}")
        options = options or {}
        if not isinstance(options, dict):
            raise SlmkitError(f"{_where(src, lines, path + (kind,))}: options must be a mapping")
        allowed = _allowed_stage_keys(kind, options.get("method"))
        bad = sorted(set(options) - allowed)
        if bad:
            raise SlmkitError(f"{_where(src, lines, path + (kind, bad[0]))}: unknown option {bad[0]!r} "
                              f"for {kind}{' ' + options['method'] if options.get('method') else ''}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        stage = Stage(kind, options, lines.get(path + (kind,)))
        try:
            stage_configs(stage)
        except (SlmkitError, TypeError, ValueError) as e:
            raise SlmkitError(f"{_where(src, lines, path + (kind,))}: {e}") from None
        stages.append(stage)
    calib = _build(Calibration, data.get("calibration") or {}, src, lines, ("calibration",))
    ev = _build(Evaluation, data.get("evaluation") or {}, src, lines, ("evaluation",))
    return Recipe(str(data.get("name") or Path(src).stem), str(data.get("model") or "default"),
                  stages, calib, ev, src)


def shipped_recipes() -> dict[str, Path]:
    """The recipes that ship inside the package (`slmkit/recipes/shipped/*.yaml`), by name."""
    folder = Path(str(resources.files("slmkit.recipes") / "shipped"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe file: `recipe` itself when it is a YAML path or an existing file, else the shipped
    recipe of that name."""
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    shipped = shipped_recipes()
    if str(recipe) not in shipped:
        raise SlmkitError(f"no recipe file {recipe!r} and no shipped recipe of that name; shipped: "
                          f"{', '.join(shipped)}")
    return shipped[str(recipe)]


def load_recipe(path: str | Path) -> Recipe:
    """Parse a recipe given as a YAML path or the name of a shipped recipe."""
    p = resolve_recipe(path)
    if not p.is_file():
        raise SlmkitError(f"recipe {p} does not exist")
    return parse_recipe(p.read_text(encoding="utf-8"), str(p))
