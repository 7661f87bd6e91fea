"""Text sources: the embedded default, text files or folders, jsonl fields, Hugging Face datasets.

Every source returns `TextData`: a list of documents plus a name and a content hash, so reports can
say exactly what was measured. `load_text(spec)` turns a CLI/recipe string into one:

    default            the embedded evaluation part (CPython's pydoc topics, odd positions)
    default:calib      the embedded calibration part (even positions; never overlaps eval)
    path/file.txt      one document per file; a folder reads *.txt and *.md below it, sorted
    path/file.jsonl    one document per line, from `field` (default "text")
    hf:NAME[:CONFIG]   a Hugging Face dataset (`split`, `field`); needs `pip install datasets`
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slmkit.errors import SlmkitError

EMBEDDED_EVAL_DOCS = 10
TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass(frozen=True)
class TextData:
    """Documents and a name saying where they came from; `sha256` identifies the content."""

    name: str
    docs: list[str]

    @property
    def sha256(self) -> str:
        """Content hash over the documents and their boundaries."""
        h = hashlib.sha256()
        for doc in self.docs:
            b = doc.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        return h.hexdigest()

    @property
    def n_chars(self) -> int:
        return sum(len(d) for d in self.docs)

    def describe(self) -> dict:
        return {"name": self.name, "docs": len(self.docs), "chars": self.n_chars,
                "sha256": self.sha256}


def _check_nonempty(data: TextData, what: str) -> TextData:
    docs = [d for d in data.docs if d.strip()]
    if not docs:
        raise SlmkitError(f"{what} contains no text; give a file or dataset with some text in it")
    return TextData(data.name, docs)


# ---- embedded default ----------------------------------------------------------------------
def embedded_text(part: Literal["eval", "calib"] = "eval") -> TextData:
    """CPython's `pydoc_data.topics`, split by topic: sorted keys at odd positions are the
    evaluation part (joined into 10 documents of consecutive topics), even positions the
    calibration part (one document per topic, minus any text that also stands at an odd position:
    a few keys share one text). The text ships with every Python, so it is the
    same on every machine with the same Python version (the name records it)."""
    from pydoc_data import topics

    keys = sorted(topics.topics)
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    texts = [topics.topics[k] for k in keys[1::2]]
    if part == "calib":
        # some keys share one text (e.g. "else" and "if"): a text in the eval part never calibrates
        held_out = set(texts)
        return TextData(f"embedded:calib({version})",
                        [topics.topics[k] for k in keys[0::2] if topics.topics[k] not in held_out])
    if part != "eval":
        raise SlmkitError(f"embedded text part must be 'eval' or 'calib', not {part!r}")
    n = EMBEDDED_EVAL_DOCS
    bounds = [round(i * len(texts) / n) for i in range(n + 1)]
    docs = ["\n\n".join(texts[a:b]) for a, b in zip(bounds, bounds[1:])]
    return TextData(f"embedded:eval({version})", docs)


# ---- files ---------------------------------------------------------------------------------
def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SlmkitError(f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


def text_files(path: str | Path) -> TextData:
    """One document per file: a single file, or every *.txt/*.md/*.rst below a folder, sorted."""
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        if not files:
            raise SlmkitError(f"folder {p} has no {'/'.join(TEXT_SUFFIXES)} files")
    else:
        raise SlmkitError(f"text file or folder {p} does not exist")
    return _check_nonempty(TextData(str(p), [_read_utf8(f) for f in files]), str(p))


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a jsonl file, with line numbers in every error."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SlmkitError(f"jsonl file {p} does not exist")
    records = []
    for i, line in enumerate(_read_utf8(p).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SlmkitError(f"{p}:{i}: not valid JSON ({e.msg}); each line must be one object") from None
        if not isinstance(rec, dict):
            raise SlmkitError(f"{p}:{i}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
    if not records:
        raise SlmkitError(f"jsonl file {p} has no records")
    return records


def jsonl_field(path: str | Path, field: str = "text") -> TextData:
    """One document per jsonl line, taken from `field`."""
    docs = []
    for i, rec in enumerate(read_jsonl(path), 1):
        if field not in rec:
            raise SlmkitError(f"{path}: record {i} has no field {field!r} (it has: "
                              f"{', '.join(rec)}); choose one with --field")
        value = rec[field]
        if value is None or isinstance(value, (bool, list, dict)):
            raise SlmkitError(f"{path}: record {i} field {field!r} is "
                              f"{'null' if value is None else type(value).__name__}, not text; "
                              "give a field holding strings")
        docs.append(str(value))  # strings, and numbers as written
    return _check_nonempty(TextData(f"{path}:{field}", docs), str(path))


# ---- Hugging Face datasets -----------------------------------------------------------------
def hf_dataset(name: str, config: str | None = None, split: str = "test",
               field: str = "text") -> TextData:
    """Documents from a Hugging Face dataset (by hub name or local path)."""
    try:
        import datasets
    except ImportError:
        raise SlmkitError("reading Hugging Face datasets needs the `datasets` package: "
                          "pip install 'slmkit[datasets]'") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except (ConnectionError, OSError) as e:
        raise SlmkitError(
            f"could not load dataset {name!r} (config {config!r}, split {split!r}): {e}. "
            "Without network access (HF_HUB_OFFLINE=1) only datasets already in the local cache "
            "or local paths load; use a text/jsonl file instead") from None
    except ValueError as e:  # unknown split / config
        raise SlmkitError(f"dataset {name!r}: {e}") from None
    if field not in ds.column_names:
        raise SlmkitError(f"dataset {name!r} has no column {field!r}; columns: "
                          f"{', '.join(ds.column_names)}")
    return _check_nonempty(TextData(f"hf:{name}:{config or ''}:{split}:{field}",
                                    [str(t) for t in ds[field]]), f"dataset {name!r}")


# ---- one entry point for specs ------------------------------------------------------------
def load_text(spec: str, *, field: str = "text", split: str = "test") -> TextData:
    """Resolve a text spec (see the module docstring) into `TextData`."""
    if spec in ("default", "default:eval"):
        return embedded_text("eval")
    if spec == "default:calib":
        return embedded_text("calib")
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        return hf_dataset(name, config or None, split=split, field=field)
    p = Path(spec).expanduser()
    if p.suffix == ".jsonl" and p.is_file():
        return jsonl_field(p, field)
    return text_files(p)
