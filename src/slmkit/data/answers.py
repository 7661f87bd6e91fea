"""Final answers pulled out of generated text, so an output and a reference compare (e.g.
GSM8K's `#### N`)."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _norm_number(s: str) -> str:
    s = s.replace(",", "").rstrip(".")
    return s[:-2] if s.endswith(".0") else s


def extract_gsm8k(text: str) -> str | None:
    """The number after '####' if present, else the last number in the text."""
    if "####" in text:
        m = _NUMBER.search(text.split("####")[-1])
        if m:
            return _norm_number(m.group())
    found = _NUMBER.findall(text)
    return _norm_number(found[-1]) if found else None


def extract_exact(text: str) -> str | None:
    return text.strip() or None


EXTRACTORS = {"gsm8k": extract_gsm8k, "number": extract_gsm8k, "exact": extract_exact}
