"""Calibration mixes: which text a compression method calibrates on, and in what proportion.

A spec is a comma-separated list of `SOURCE[@WEIGHT]` (weight > 0, default 1, normalised to sum 1):

    embedded                         the embedded calibration text (CPython's pydoc topics, the part
                                     that never overlaps the embedded evaluation text)
    self                             text sampled from the model being compressed (`selfgen`)
    path/file.txt, folder, x.jsonl   the user's text, through `load_text` (jsonl: `field`)
    hf:NAME[:CONFIG]                 a Hugging Face dataset, through `load_text` (split "train")

    "embedded@0.5,self@0.5"    "notes/@0.3,embedded@0.7"    "hf:wikitext:wikitext-2-raw-v1"

The weight follows the last "@", so a path holding "@" needs an explicit weight ("a@b.txt@1").

`build_calibration` gives `n` rows of `length` tokens: rows are shared out by weight (largest
remainder, so they sum to exactly `n`; every source gets at least one row when `n` allows), text
sources are cut at seeded random offsets by `calibration_set`, `self` rows come from
`generate_calibration_text`, and the rows are shuffled with the seed. The same (model, tokenizer,
spec, n, length, seed) gives the same tensor. `build_calibration_with_provenance` also returns what
each source contributed, for the output's `slmkit.json`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.data.chunk import calibration_set
from slmkit.data.selfgen import generate_calibration_text_with_provenance, generate_with_teacher_targets
from slmkit.data.sources import embedded_text, load_text
from slmkit.errors import SlmkitError
from slmkit.models.introspect import check_length

if TYPE_CHECKING:
    import torch

EMBEDDED = "embedded"
SELF = "self"
EVAL_SPECS = ("default", "default:eval")  # the embedded evaluation text: never calibrate on it


DEFAULT_SPEC = "embedded@0.5,self@0.5"


@dataclass
class Calibration:
    """A calibration set to build: the mix (`spec`, see the module docstring), `n` rows of `length`
    tokens, the sampling seed. The default mix is half the embedded pydoc calibration text and half
    text sampled from the model itself: pydoc alone overfits its domain on SmolLM2 W4 (GPTQ), the
    model's own text alone gives up some in-domain gain (benchmarks/history/quantization.md)."""

    spec: str = DEFAULT_SPEC
    n: int = 128
    length: int = 512
    seed: int = 0

    def check(self) -> None:
        """Refuse a bad mix, size or missing text source before any model is loaded."""
        parsed = CalibSpec.parse(self.spec)
        for name in ("n", "length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "n" else 2):
                raise SlmkitError(f"calibration {name} must be an integer >= {1 if name == 'n' else 2}, "
                                  f"not {value!r}")
        for s in parsed.sources:
            if s.source not in (EMBEDDED, SELF) and not s.source.startswith(("hf:", "default")) \
                    and not Path(s.source).expanduser().exists():
                raise SlmkitError(f"calibration source {s.source!r} does not exist: give a file or "
                                  f"folder, {EMBEDDED!r}, {SELF!r} or 'hf:NAME[:CONFIG]'")


@dataclass(frozen=True)
class CalibSource:
    source: str    # "embedded", "self", a path, or "hf:NAME[:CONFIG]"
    weight: float  # share of the rows, normalised over the spec (sums to 1)


@dataclass(frozen=True)
class CalibSpec:
    """A parsed calibration mix; `str(spec)` gives back a spec string with normalised weights."""

    sources: tuple[CalibSource, ...]

    @classmethod
    def parse(cls, spec: str | CalibSpec) -> CalibSpec:
        """Parse `SOURCE[@WEIGHT],...` (see the module docstring). Pure: no file is read here."""
        if isinstance(spec, CalibSpec):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise SlmkitError("calibration spec is empty; give e.g. 'embedded', 'self' or "
                              "'embedded@0.5,self@0.5'")
        parts: list[tuple[str, float]] = []
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                raise SlmkitError(f"calibration spec {spec!r} has an empty entry; "
                                  "separate sources with single commas")
            source, at, weight_text = item.rpartition("@")
            if not at:
                source, weight = item, 1.0
            else:
                source = source.strip()
                try:
                    weight = float(weight_text)
                except ValueError:
                    raise SlmkitError(f"calibration source {item!r}: weight {weight_text!r} is not "
                                      "a number; write SOURCE@WEIGHT, e.g. embedded@0.5") from None
                if not source:
                    raise SlmkitError(f"calibration entry {item!r} has a weight but no source")
            if not math.isfinite(weight) or weight <= 0:
                raise SlmkitError(f"calibration source {source!r}: weight must be a finite number "
                                  f"> 0, not {weight}; leave a source out to give it no rows")
            if source in EVAL_SPECS:
                raise SlmkitError(f"calibration source {source!r} is the embedded evaluation text; "
                                  f"calibrate on {EMBEDDED!r} (the held-out calibration part)")
            if source in (s for s, _ in parts):
                raise SlmkitError(f"calibration source {source!r} is listed twice in {spec!r}; "
                                  "list it once with the summed weight")
            parts.append((source, weight))
        total = sum(w for _, w in parts)
        return cls(tuple(CalibSource(s, w / total) for s, w in parts))

    def __str__(self) -> str:
        return ",".join(f"{s.source}@{s.weight:.6g}" for s in self.sources)

    @property
    def needs_model(self) -> bool:
        """True when the mix samples text from the model (`self`)."""
        return any(s.source == SELF for s in self.sources)


def allocate_rows(weights: Sequence[float], n: int) -> list[int]:
    """Split `n` rows by `weights` with largest-remainder rounding: the counts sum to exactly `n`
    and each is floor or ceil of its quota (ties go to the earlier source). When n >= len(weights)
    every source gets at least one row, taken from the source most above its quota."""
    if n < 0 or not weights or any(not (w > 0) for w in weights):
        raise SlmkitError(f"cannot allocate {n} rows by weights {list(weights)}")
    total = sum(weights)
    quotas = [n * w / total for w in weights]
    rows = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - rows[i]), i))
    for i in by_remainder[: n - sum(rows)]:
        rows[i] += 1
    if n >= len(weights):
        for i in [i for i, r in enumerate(rows) if r == 0]:
            donor = max((j for j, r in enumerate(rows) if r > 1), key=lambda j: (rows[j] - quotas[j], -j))
            rows[donor] -= 1
            rows[i] = 1
    return rows


def _load_source(source: str, field: str, split: str):
    if source == EMBEDDED:
        return embedded_text("calib")
    if not source.startswith("hf:") and not source.startswith("default") \
            and not Path(source).expanduser().exists():
        raise SlmkitError(f"unknown calibration source {source!r}: not a file or folder, nor one "
                          f"of {EMBEDDED!r}, {SELF!r}, 'hf:NAME[:CONFIG]'")
    return load_text(source, field=field, split=split)


def _tensor_sha256(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.contiguous().numpy().tobytes()).hexdigest()


def build_calibration_with_provenance(
        model, tokenizer, spec: str | CalibSpec, n: int = 128, length: int = 512,
        seed: int = 0, *, field: str = "text", split: str = "train",
        selfgen: dict | None = None, cache_dir: str | Path | None = None,
) -> tuple[torch.Tensor, dict]:
    """`build_calibration`, also returning the provenance dict:

        {"spec": normalised spec, "n", "length", "seed", "sha256": of the returned ids,
         "sources": [{"source", "weight", "rows", "tokens",
                      "text": {name, docs, chars, sha256}            (text sources)
                      "generation": {fingerprint, parameters, cache} (self)}, ...]}
    """
    ids, _, provenance = _build(model, tokenizer, spec, n, length, seed, field=field, split=split,
                                selfgen=selfgen, cache_dir=cache_dir)
    return ids, provenance


def build_calibration_with_targets(
        model, tokenizer, spec: str | CalibSpec, n: int = 128, length: int = 512,
        seed: int = 0, *, topk: int = 32, field: str = "text", split: str = "train",
        selfgen: dict | None = None, cache_dir: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """`build_calibration_with_provenance` (same rows, same order), also returning soft targets
    (soft_ids int32 [n, length, topk], soft_probs [n, length, topk]) for `slmkit.train.Batches`:
    the model's own next-token distributions, recorded while it wrote the `self` rows
    (`slmkit.data.selfgen.generate_with_teacher_targets`), and zeros on every text row."""
    return _build(model, tokenizer, spec, n, length, seed, field=field, split=split,
                  selfgen=selfgen, cache_dir=cache_dir, topk=topk)


def _build(model, tokenizer, spec, n, length, seed, *, field, split, selfgen, cache_dir, topk=0):
    """-> (ids, soft_ids, soft_probs, provenance) with topk, else (ids, None, provenance)."""
    import torch

    if not (isinstance(n, int) and isinstance(length, int)) or n < 1 or length < 2:
        raise SlmkitError(f"calibration set needs n >= 1 and length >= 2 (got n={n}, length={length})")
    parsed = CalibSpec.parse(spec)
    if model is not None:
        check_length(model, length, "the calibration sequence length")
    elif parsed.needs_model:
        raise SlmkitError("calibration source 'self' samples text from the model; pass the model")
    rows = allocate_rows([s.weight for s in parsed.sources], n)

    # text sources first: a missing file or a too-short text fails before any slow generation
    parts: dict[int, torch.Tensor] = {}
    records: list[dict] = []
    for i, (src, k) in enumerate(zip(parsed.sources, rows)):
        rec = {"source": src.source, "weight": src.weight, "rows": k, "tokens": k * length}
        records.append(rec)
        if src.source == SELF:
            continue
        data = _load_source(src.source, field, split)
        rec["text"] = data.describe()
        if k == 0:
            continue
        try:
            parts[i] = calibration_set(tokenizer, data, k, length, seed)
        except SlmkitError as e:
            raise SlmkitError(f"calibration source {src.source!r} ({k} of {n} rows of {length} "
                              f"tokens): {e}") from None
    soft: dict[int, tuple[torch.Tensor, torch.Tensor]] = {
        i: (torch.zeros(*p.shape, topk, dtype=torch.int32), torch.zeros(*p.shape, topk)) for i, p in parts.items()}
    for i, (src, k) in enumerate(zip(parsed.sources, rows)):
        if src.source == SELF and k > 0:
            kwargs = {"seed": seed, "cache_dir": cache_dir, **(selfgen or {})}
            if topk:
                parts[i], *soft[i], records[i]["generation"] = generate_with_teacher_targets(
                    model, tokenizer, k, length, topk, **kwargs)
            else:
                parts[i], records[i]["generation"] = generate_calibration_text_with_provenance(
                    model, tokenizer, k, length, **kwargs)

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([parts[i] for i in sorted(parts)])[order]
    provenance = {"spec": str(parsed), "n": n, "length": length, "seed": seed,
                  "sha256": _tensor_sha256(ids), "sources": records}
    if not topk:
        return ids, None, provenance
    return (ids, torch.cat([soft[i][0] for i in sorted(parts)])[order],
            torch.cat([soft[i][1] for i in sorted(parts)])[order], provenance)


def build_calibration(model, tokenizer, spec: str | CalibSpec, n: int = 128,
                      length: int = 512, seed: int = 0, *, field: str = "text",
                      split: str = "train", selfgen: dict | None = None,
                      cache_dir: str | Path | None = None) -> torch.Tensor:
    """Calibration rows mixed from `spec` -> LongTensor [n, length] (see the module docstring).

    model       needed for `self` and to check `length` against its context (may be None for a
                mix of text sources only)
    field       the jsonl field / dataset column of text sources
    split       the Hugging Face dataset split (calibrate on "train"; evaluate on "test")
    selfgen     keyword arguments for `generate_calibration_text` (temperature, top_p, ...)
    cache_dir   where self-generated rows are cached (default `$SLMKIT_CACHE/selfgen`)
    """
    ids, _ = build_calibration_with_provenance(model, tokenizer, spec, n, length, seed,
                                               field=field, split=split, selfgen=selfgen,
                                               cache_dir=cache_dir)
    return ids
