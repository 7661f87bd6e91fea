"""Write benchmarks/RESULTS.md, the current state, from the committed results in benchmarks/results/,
and the same sections as one Markdown fragment per topic in docs/results/<topic>.md, which the
documentation's capability pages include (`--8<--`).

    python benchmarks/make_results.py           # rewrite RESULTS.md and docs/results/
    python benchmarks/make_results.py --check   # exit 1 if any of them differs from what would be written

Every figure on the page comes from a results file: which files and rows each section shows, and
their labels, are chosen in `_sections_compress.py` and `_sections_other.py`; the numbers, dates,
machines and commands are read from the JSON. A section's topic is its history file's name
(`history/<topic>.md`). Standard library only, so CI can run it without the project installed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE / "RESULTS.md"
DOCS = HERE.parent / "docs" / "results"
LETTERS = "abcdefghij"


def load(name: str) -> dict:
    data = json.loads((RESULTS / name).read_text())
    for field in ("command", "date", "machine"):
        if field not in data:
            raise SystemExit(f"results/{name} has no {field!r} field")
    return data


class Runs:
    """The results files one section reads; with more than one, each gets a letter that the
    section's table cites and the footer resolves."""

    def __init__(self, *names: str):
        self.names = list(names)
        self.data = {n: load(n) for n in names}

    def __getitem__(self, name: str) -> dict:
        return self.data[name]

    def key(self, name: str) -> str:
        return LETTERS[self.names.index(name)]

    def footer(self, folder: str = "results/") -> list[str]:
        lines = []
        for n in self.names:
            d = self.data[n]
            tag = f"[{self.key(n)}] " if len(self.names) > 1 else ""
            lines.append(f"- {tag}`{folder}{n}`, {d['date']}, {cpu(d['machine'])}: `{command(d)}`")
        return lines


def cpu(m: dict) -> str:
    """The machine record as a phrase: CPU model, cores, the instruction sets that decide speed."""
    name = m["cpu"].replace("(R)", "")
    flags = ["AMX"] if m.get("amx") else []
    flags.append("AVX-512" if m.get("avx512") else "no AVX-512")
    auto = m.get("auto_dtype")
    if isinstance(auto, dict) and auto.get("native_bf16"):
        flags.append("native bf16")
    return f"{name} ({m['cores']} cores, {', '.join(flags)})"


def recorded_argv(cmd: str) -> list[str]:
    """Split a command recorded as a plain space-join of argv (results written before `argv` was
    kept): an option's value runs to the next `--option`, so values with spaces survive."""
    argv: list[str] = []
    value: list[str] | None = None  # the words after the current option
    for tok in cmd.split(" "):
        if tok.startswith("--"):
            if value:
                argv.append(" ".join(value))
            argv.append(tok)
            value = []
        elif value is None:
            argv.append(tok)
        else:
            value.append(tok)
    if value:
        argv.append(" ".join(value))
    return argv


def command(d: dict) -> str:
    """The run's command, shell-quoted, with the model folders as get_models.py names them."""
    argv = list(d["argv"]) if "argv" in d else recorded_argv(d["command"])
    argv = [a.replace("/work/models/", "models/").replace("/work/runs/", "runs/") for a in argv]
    if argv[0].startswith("python"):
        argv[0] = "python"
    return shlex.join(argv)


# ---- formatting ----------------------------------------------------------------------------------

def table(head: list[str], rows: list[list], left: int = 1) -> list[str]:
    """A Markdown table; the first `left` columns are text, the others right-aligned."""
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i < left else "---:" for i in range(len(head))) + "|"]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def x(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.1f}%"


def share(v: float) -> str:
    return f"{v * 100:.1f}%"


class Section:
    """One section: its title, text and runs, and its topic (the history file it continues)."""

    def __init__(self, title: str, lines: list[str], runs: Runs, topic: str):
        self.title, self.lines, self.runs, self.topic = title, lines, runs, topic

    def results_md(self) -> list[str]:
        """As in benchmarks/RESULTS.md: paths relative to benchmarks/."""
        return ([f"## {self.title}", ""] + self.lines + ["", "Measured:"] + self.runs.footer()
                + ["", f"History: [{self.topic}](history/{self.topic}.md).", ""])

    def docs_md(self) -> list[str]:
        """As in a docs page, under its "Measured results" heading: paths from the repository root."""
        return ([f"### {self.title}", ""] + self.lines + ["", "Measured:"] + self.runs.footer("benchmarks/results/")
                + ["", f"History: `benchmarks/history/{self.topic}.md`.", ""])


def section(title: str, intro: list[str], body: list[str], runs: Runs, history: str) -> Section:
    return Section(title, intro + [""] + body, runs, history)


# ---- the page ------------------------------------------------------------------------------------

HEADER = [
    "# Measured results",
    "",
    "The current state of each capability, one section each: slmkit beside its peer (or baseline) on",
    "the same work, the command, the date and the CPU. Generated by `benchmarks/make_results.py` from",
    "the committed files in `benchmarks/results/`; do not edit by hand (`make_results.py --check` fails",
    "on drift). The lab notebook behind these runs, and every earlier run, is in",
    "[history/](history/README.md), by topic. How to fetch the models and run a benchmark:",
    "[README.md](README.md).",
    "",
    "How to read it: speed ratios are taken side by side in one run on one machine (the machines are",
    "small shared VMs, and absolute times move between runs); where a table cites several runs, its",
    "run column names the file. *pydoc* is the embedded evaluation text (Python documentation, the",
    "calibration text's domain); *Austen* is Emma from `../shared/data` (out of domain). Perplexity",
    "is protocol (i): non-overlapping windows, tokens of the model's own tokenizer. Commands name",
    "model folders as `models/<name>`, where `get_models.py` puts them.",
    "",
]


DOCS_HEADER = ["<!-- Generated by benchmarks/make_results.py from benchmarks/results/*.json: do not edit. -->", ""]


def sections() -> list[Section]:
    sys.path.insert(0, str(HERE))
    import _sections_compress
    import _sections_other

    return [make() for make in _sections_other.FIRST + _sections_compress.SECTIONS + _sections_other.SECTIONS]


def render(secs: list[Section]) -> str:
    lines = list(HEADER)
    for s in secs:
        lines += s.results_md()
    return "\n".join(lines).rstrip("\n") + "\n"


def render_docs(secs: list[Section]) -> dict[str, str]:
    """docs/results/<topic>.md for each topic, its sections in RESULTS.md's order."""
    by_topic: dict[str, list[str]] = {}
    for s in secs:
        by_topic.setdefault(s.topic, list(DOCS_HEADER)).extend(s.docs_md())
    return {f"{topic}.md": "\n".join(lines).rstrip("\n") + "\n" for topic, lines in by_topic.items()}


def stale(text: str, docs: dict[str, str]) -> list[str]:
    """The generated files that differ from what would be written now (or should not exist)."""
    out = [] if OUT.exists() and OUT.read_text() == text else ["benchmarks/RESULTS.md"]
    on_disk = {p.name for p in DOCS.glob("*.md")} if DOCS.is_dir() else set()
    for name in sorted(on_disk | set(docs)):
        if name not in docs or name not in on_disk or (DOCS / name).read_text() != docs[name]:
            out.append(f"docs/results/{name}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed RESULTS.md, write nothing")
    args = ap.parse_args()
    secs = sections()
    text, docs = render(secs), render_docs(secs)
    if args.check:
        bad = stale(text, docs)
        if bad:
            print(f"{', '.join(bad)}: not what make_results.py writes: run "
                  "`python benchmarks/make_results.py` and commit the result", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10))} lines)")
    DOCS.mkdir(parents=True, exist_ok=True)
    for p in DOCS.glob("*.md"):
        if p.name not in docs:
            p.unlink()
    for name, body in docs.items():
        (DOCS / name).write_text(body)
    print(f"wrote {len(docs)} fragments in {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
