"""Calibration mixes: which text a compression method calibrates on, and in what proportion.

A spec is a comma-separated list of `SOURCE[@WEIGHT]` (weight > 0, default 1, normalised to sum 1):

    embedded                         the embedded calibration text (CPython's pydoc topics, the part
                                     that never overlaps the embedded evaluation text)
    self                             text sampled from the model being compressed
                                     (`slmkit.generate.selfgen`)
    path/file.txt, folder, x.jsonl   the user's text, through `load_text` (jsonl: `field`)
    hf:NAME[:CONFIG]                 a Hugging Face dataset, through `load_text` (split "train")

    "embedded@0.5,self@0.5"    "notes/@0.3,embedded@0.7"    "hf:wikitext:wikitext-2-raw-v1"

The weight follows the last "@", so a path holding "@" needs an explicit weight ("a@b.txt@1").

Rows are shared out by weight (`allocate_rows`: largest remainder, so they sum to exactly `n`;
every source gets at least one row when `n` allows); text sources are cut at seeded random offsets
by `calibration_set` (`text_parts`). `slmkit.generate.build_calibration` adds the `self` rows and
shuffles the set with the seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.data.chunk import calibration_set
from slmkit.data.sources import embedded_text, load_text
from slmkit.errors import SlmkitError

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
            if s.source != SELF:
                check_text_source(s.source)


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


def check_text_source(source: str) -> None:
    """Refuse a text source that is neither embedded, a dataset, nor an existing file or folder."""
    if source != EMBEDDED and not source.startswith(("hf:", "default")) \
            and not Path(source).expanduser().exists():
        raise SlmkitError(f"unknown calibration source {source!r}: not a file or folder, nor one "
                          f"of {EMBEDDED!r}, {SELF!r}, 'hf:NAME[:CONFIG]'")


def _load_source(source: str, field: str, split: str):
    if source == EMBEDDED:
        return embedded_text("calib")
    check_text_source(source)
    return load_text(source, field=field, split=split)


def text_parts(tokenizer, parsed: CalibSpec, rows: list[int], length: int, seed: int, *,
               field: str = "text", split: str = "train") -> tuple[dict[int, torch.Tensor], list[dict]]:
    """The rows of every text source of `parsed` (`rows[i]` rows of `length` tokens from source i;
    `self` sources are left to the caller) -> ({source index: ids}, a record per source)."""
    parts: dict[int, torch.Tensor] = {}
    records: list[dict] = []
    n = sum(rows)
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
    return parts, records


def tensor_sha256(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.contiguous().numpy().tobytes()).hexdigest()
