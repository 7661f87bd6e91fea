"""A report collecting several models' metrics side by side -> JSON, Markdown, PNG plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.files import write_text_atomic

# (dotted metric path, column label, format) for the Markdown/terminal table and the plot
HEADLINE = [
    ("ppl.window.token_perplexity", "ppl (i) window", "{:.3f}"),
    ("ppl.rolling.word_perplexity", "word ppl (ii)", "{:.3f}"),
    ("ppl.rolling.bits_per_byte", "bits/byte (ii)", "{:.4f}"),
    ("mc.acc", "MC acc", "{:.3f}"),
    ("mc.acc_norm", "MC acc_norm", "{:.3f}"),
    ("gen.exact_match", "gen EM", "{:.3f}"),
    ("speed.prefill_tok_s", "prefill tok/s", "{:.1f}"),
    ("speed.decode_tok_s", "decode tok/s", "{:.1f}"),
    ("speed.ttft_s", "TTFT s", "{:.3f}"),
    ("speed.latency_p50_ms", "p50 ms", "{:.1f}"),
    ("speed.latency_p95_ms", "p95 ms", "{:.1f}"),
    ("speed.peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("model.params", "params (M)", "{:.1f}"),
    ("model.disk_mb", "disk MB", "{:.1f}"),
]
_SCALE = {"model.params": 1e-6}


def lookup(metrics: dict, path: str):
    node = metrics
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


class Report:
    """Several models' metrics side by side; `save` writes report.json, report.md and (2+ models)
    report.png."""

    def __init__(self, title: str = "slmkit evaluation"):
        self.title = title
        self.models: dict[str, dict] = {}

    def add(self, name: str, metrics: dict) -> None:
        """Add (or replace) the metrics of the model called `name`."""
        self.models[name] = metrics

    def columns(self) -> list[tuple[str, str, str]]:
        return [c for c in HEADLINE if any(lookup(m, c[0]) is not None for m in self.models.values())]

    def cell(self, metrics: dict, path: str, fmt: str) -> str:
        v = lookup(metrics, path)
        return "-" if v is None else fmt.format(v * _SCALE.get(path, 1))

    def to_markdown(self) -> str:
        """The headline metrics as a Markdown table, one row per model."""
        cols = self.columns()
        lines = [f"# {self.title}", "", "| model | " + " | ".join(c[1] for c in cols) + " |",
                 "|---|" + "---:|" * len(cols)]
        for name, m in self.models.items():
            lines.append(f"| {name} | " + " | ".join(self.cell(m, p, f) for p, _, f in cols) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {"title": self.title, "models": self.models}

    def plot(self, path: str | Path) -> Path:
        """Bar charts, one panel per headline metric, models side by side (needs matplotlib)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise SlmkitError("plotting needs matplotlib: pip install 'slmkit[plot]'") from None
        cols = self.columns()
        names = list(self.models)
        ncols = min(4, len(cols))
        nrows = -(-len(cols) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
        for ax, (p, label, _) in zip(axes.flat, cols):
            vals = [(lookup(self.models[n], p) or 0) * _SCALE.get(p, 1) for n in names]
            ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
            ax.set_title(label, fontsize=10)
            ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        for ax in list(axes.flat)[len(cols):]:
            ax.axis("off")
        fig.suptitle(self.title)
        fig.tight_layout()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)
        return path

    def save(self, folder: str | Path) -> list[Path]:
        """Write report.json, report.md and (two or more models) report.png into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in (("report.json", json.dumps(self.to_dict(), indent=2, default=str) + "\n"),
                           ("report.md", self.to_markdown())):
            written.append(write_text_atomic(folder / name, text))
        if len(self.models) >= 2:
            written.append(self.plot(folder / "report.png"))
        return written
