"""A shrink budget: `size=0.35x`, `decode=2x`, `ppl-rise=5%`, alone or combined with commas.

- `size`: the output's file size as a fraction of the source's bf16 size (at most);
- `decode`: decode speed as a multiple of the source's, both measured in the same run (at least);
- `ppl-rise`: perplexity rise over the source, the worse of the evaluation texts (at most).

A candidate meets the budget when it meets every limit given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slmkit.errors import SlmkitError

KEYS = {"size": "x", "decode": "x", "ppl-rise": "%"}
EXAMPLE = "size=0.35x, decode=2x, ppl-rise=5% (any of them, joined by commas)"


@dataclass(frozen=True)
class Budget:
    size: float | None = None       # at most this fraction of the source's bf16 bytes
    decode: float | None = None     # at least this multiple of the source's decode tok/s
    ppl_rise: float | None = None   # at most this relative perplexity rise (0.05 = 5%)

    def meets(self, size: float, decode: float | None, ppl_rise: float | None) -> bool:
        """Whether a candidate with these ratios (size and decode against the source, ppl rise
        as a fraction) is within every limit; an unmeasured figure fails a limit on it."""
        if self.size is not None and size > self.size:
            return False
        if self.decode is not None and (decode is None or decode < self.decode):
            return False
        return self.ppl_rise is None or (ppl_rise is not None and ppl_rise <= self.ppl_rise)

    def __str__(self) -> str:
        parts = [f"size={self.size:g}x" if self.size is not None else "",
                 f"decode={self.decode:g}x" if self.decode is not None else "",
                 f"ppl-rise={100 * self.ppl_rise:g}%" if self.ppl_rise is not None else ""]
        return ",".join(p for p in parts if p)


def parse_budget(text: str) -> Budget:
    """`Budget` of a string such as "size=0.35x,ppl-rise=5%"; a clear error on anything else."""
    if not isinstance(text, str) or not text.strip():
        raise SlmkitError(f"empty budget; give e.g. {EXAMPLE}")
    values: dict[str, float] = {}
    for part in text.split(","):
        key, sep, raw = part.strip().partition("=")
        key = key.strip().lower()
        if not sep or key not in KEYS:
            raise SlmkitError(f"budget part {part.strip()!r}: expected one of "
                              f"{', '.join(k + '=' for k in KEYS)}; e.g. {EXAMPLE}")
        if key in values:
            raise SlmkitError(f"budget gives {key} twice")
        unit = KEYS[key]
        raw = raw.strip().lower()
        if not raw.endswith(unit):
            raise SlmkitError(f"budget {key}={raw}: write it with its unit, e.g. {key}=" +
                              ("0.35x" if key == "size" else "2x" if key == "decode" else "5%"))
        try:
            value = float(raw[: -len(unit)])
        except ValueError:
            raise SlmkitError(f"budget {key}={raw}: not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise SlmkitError(f"budget {key}={raw}: must be a positive number")
        if key == "size" and value >= 1:
            raise SlmkitError(f"budget size={raw}: a fraction of the source's size below 1x, e.g. 0.35x")
        values[key] = value / 100 if unit == "%" else value
    return Budget(values.get("size"), values.get("decode"), values.get("ppl-rise"))


@dataclass(frozen=True)
class Candidate:
    """One measured output: its name, size and decode speed as ratios to the source's, and its
    perplexity rise (the worse of the texts, a fraction)."""

    name: str
    size: float
    decode: float | None
    ppl_rise: float


def dominates(a: Candidate, b: Candidate) -> bool:
    """`a` is no worse than `b` in size, decode speed and ppl rise, and better in one."""
    da, db = a.decode or 0.0, b.decode or 0.0
    no_worse = a.size <= b.size and da >= db and a.ppl_rise <= b.ppl_rise
    return no_worse and (a.size < b.size or da > db or a.ppl_rise < b.ppl_rise)


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other candidate dominates, in their given order."""
    return [c for c in candidates if not any(dominates(o, c) for o in candidates if o is not c)]


def choose(candidates: list[Candidate], budget: Budget) -> Candidate | None:
    """The chosen output: among the Pareto front's candidates within the budget, the lowest ppl
    rise; when the budget limits only the ppl rise, the smallest (then the fastest). None when no
    candidate meets the budget."""
    ok = [c for c in pareto_front(candidates) if budget.meets(c.size, c.decode, c.ppl_rise)]
    if not ok:
        return None
    if budget.size is None and budget.decode is None:
        return min(ok, key=lambda c: (c.size, -(c.decode or 0.0)))
    return min(ok, key=lambda c: (c.ppl_rise, c.size))
