"""The run report: report.json, report.md and a self-contained report.html (PNG plots inlined as
base64) with, per stage, parameters, disk size, perplexity (both protocols), MC accuracy,
decode tok/s, peak memory and wall time; and the comparison of several runs (`slmkit report`)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.files import write_text_atomic
from slmkit.recipes.gguf_rows import gguf_markdown

COLUMNS = [  # (label, getter, format)
    ("params (M)", lambda r: r["metrics"].get("params", 0) / 1e6, "{:.1f}"),
    ("disk MB", lambda r: r["metrics"].get("disk_mb"), "{:.1f}"),
    ("decode tok/s", lambda r: r["metrics"].get("speed", {}).get("decode_tok_s"), "{:.1f}"),
    ("MC acc", lambda r: r["metrics"].get("mc", {}).get("acc"), "{:.3f}"),
    ("peak MB", lambda r: r.get("peak_rss_mb"), "{:.0f}"),
    ("seconds", lambda r: r.get("seconds"), "{:.0f}"),
]


def _ppl_columns(stages: list[dict]) -> list[tuple]:
    texts = []
    for s in stages:
        for t in s["metrics"].get("ppl", {}):
            if t not in texts:
                texts.append(t)
    cols = []
    for t in texts:
        short = Path(t).stem if t != "default" else "eval text"
        cols.append((f"ppl (i) {short}", lambda r, t=t: r["metrics"].get("ppl", {}).get(t, {}).get("window"), "{:.3f}"))
        if any("word_ppl" in s["metrics"].get("ppl", {}).get(t, {}) for s in stages):
            cols.append((f"word ppl (ii) {short}",
                         lambda r, t=t: r["metrics"].get("ppl", {}).get(t, {}).get("word_ppl"), "{:.3f}"))
    return cols


def _source(report: dict) -> dict:
    return next((s for s in report["stages"] if s["stage"] == "00-source"), report["stages"][0])


def _ratio_columns(report: dict) -> list[tuple]:
    """Disk size and decode speed relative to the source model (the run's 00-source row)."""
    src = _source(report)["metrics"]
    cols = []
    if src.get("disk_mb"):
        cols.append(("size vs source", lambda r: r["metrics"]["disk_mb"] / src["disk_mb"], "{:.2f}x"))
    if src.get("speed", {}).get("decode_tok_s"):
        cols.append(("decode vs source",
                     lambda r: r["metrics"]["speed"]["decode_tok_s"] / src["speed"]["decode_tok_s"], "{:.2f}x"))
    return cols


def table(report: dict) -> tuple[list[str], list[list[str]]]:
    stages = report["stages"]
    cols = _ppl_columns(stages) + COLUMNS + _ratio_columns(report)
    rows = []
    for s in stages:
        cells = []
        for _, get, fmt in cols:
            try:
                v = get(s)
            except (KeyError, TypeError):
                v = None
            cells.append("-" if v is None else fmt.format(v))
        rows.append([s["stage"], *cells])
    return ["stage", *[c[0] for c in cols]], rows


def pareto(runs: dict[str, dict]) -> list[dict]:
    """Every measured stage of every run as a point (disk MB, ppl (i) on each text, decode tok/s),
    with the points that dominate it: no larger, no worse on any ppl, no slower (where measured),
    and strictly better on one. A chain is Pareto-better than quantize-only / prune-only when
    its final model is dominated by none of their points and dominates them at their sizes.
    A source model shared by several runs is listed once. Decode speeds are the per-stage
    measurements, taken at different moments of the runs: treat small speed differences as noise."""
    pts, sources = [], set()
    for run, rep in runs.items():
        for s in rep["stages"]:
            if s["stage"] == "00-source":   # the same source in several runs is one point
                if rep["model"] in sources:
                    continue
                sources.add(rep["model"])
            m = s["metrics"]
            ppl = {t: v.get("window") for t, v in m.get("ppl", {}).items()}
            if m.get("disk_mb") and ppl and all(ppl.values()):
                pts.append({"run": run, "stage": s["stage"], "disk_mb": m["disk_mb"], "ppl": ppl,
                            "decode_tok_s": m.get("speed", {}).get("decode_tok_s")})

    def better_or_equal(a, b):  # a is at least as good as b everywhere both are measured
        if a["disk_mb"] > b["disk_mb"] or set(a["ppl"]) != set(b["ppl"]):
            return False
        if any(a["ppl"][t] > b["ppl"][t] for t in a["ppl"]):
            return False
        return not (a["decode_tok_s"] and b["decode_tok_s"] and a["decode_tok_s"] < b["decode_tok_s"])

    for p in pts:
        p["dominated_by"] = [f"{q['run']}/{q['stage']}" for q in pts
                             if q is not p and better_or_equal(q, p) and not better_or_equal(p, q)]
    return pts


def pareto_markdown(runs: dict[str, dict]) -> str:
    pts = pareto(runs)
    if not pts:
        return ""
    texts = list(pts[0]["ppl"])
    head = ["run/stage", "disk MB", *[f"ppl (i) {Path(t).stem if t != 'default' else 'eval text'}" for t in texts],
            "decode tok/s", "dominated by"]
    out = ["## Pareto (size, perplexity, decode speed)", "",
           "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for p in pts:
        cells = [f"{p['run']}/{p['stage']}", f"{p['disk_mb']:.1f}",
                 *[f"{p['ppl'].get(t, float('nan')):.3f}" for t in texts],
                 f"{p['decode_tok_s']:.1f}" if p["decode_tok_s"] else "-",
                 ", ".join(p["dominated_by"]) or "**on the front**"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def side_by_side_line(report: dict) -> str | None:
    """The run's like-for-like speed comparison of the final model with the source, in words."""
    sbs = report.get("side_by_side")
    if not sbs or "decode_ratio" not in sbs:
        return None
    line = (f"Side by side in one process ({sbs['rounds']} alternating rounds, best of each): "
            f"{sbs['stage']} decodes at {sbs['final']['decode_tok_s']:.1f} tok/s, the source at "
            f"{sbs['source']['decode_tok_s']:.1f} tok/s: **{sbs['decode_ratio']:.2f}x**")
    if "prefill_ratio" in sbs:
        line += f" (prefill {sbs['prefill_ratio']:.2f}x)"
    return line + ". The per-stage speed columns were taken at different moments; compare with care."


def to_markdown(report: dict) -> str:
    head, rows = table(report)
    out = [f"# {report['recipe']} on {report['model']}", "", "| " + " | ".join(head) + " |",
           "|---|" + "---:|" * (len(head) - 1)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    if (line := side_by_side_line(report)) is not None:
        out += ["", line]
    out += loads_markdown(report)
    out += gguf_markdown(report.get("llama_cpp"))
    return "\n".join(out) + "\n"


def loads_markdown(report: dict) -> list[str]:
    """Which tools load each stage's output (`slmkit.models.loads`)."""
    stages = [s for s in report["stages"][1:] if s.get("loads")]
    if not stages:
        return []
    tools = list(stages[0]["loads"])
    out = ["", "## Where each output loads", "", "| stage | " + " | ".join(tools) + " |",
           "|---|" + "---|" * len(tools)]
    out += ["| " + " | ".join([s["stage"], *(s["loads"].get(t, "-") for t in tools)]) + " |" for s in stages]
    return out


def _figures(runs: dict[str, dict]) -> list[tuple[str, bytes]]:
    """(title, PNG bytes): size vs ppl per stage, decode tok/s per stage, MC accuracy per stage."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    figs = []

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        return buf.getvalue()

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rep in runs.items():
        pts = [(s["metrics"].get("disk_mb"), next(iter(s["metrics"].get("ppl", {}).values()), {}).get("window"))
               for s in rep["stages"]]
        pts = [(x, y, s["stage"]) for (x, y), s in zip(pts, rep["stages"]) if x and y]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        for x, y, label in pts:
            ax.annotate(label, (x, y), fontsize=7)
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("ppl (i), first text")
    ax.legend(fontsize=8)
    figs.append(("Size vs perplexity per stage", png(fig)))
    for title, get, xlabel in (("Decode speed per stage", lambda s: s["metrics"].get("speed", {}).get("decode_tok_s"), "decode tok/s"),
                               ("Accuracy per stage", lambda s: s["metrics"].get("mc", {}).get("acc"), "MC accuracy")):
        bars = [(f"{name}/{s['stage']}" if len(runs) > 1 else s["stage"], get(s))
                for name, rep in runs.items() for s in rep["stages"]]
        bars = [(label, v) for label, v in bars if v]       # unmeasured stages (export) are left out
        if not bars:
            continue
        fig, ax = plt.subplots(figsize=(6, 0.8 + 0.32 * len(bars)))
        ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1])
        for y, (_, v) in enumerate(bars[::-1]):
            ax.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_xlabel(xlabel)
        ax.tick_params(axis="y", labelsize=8)
        figs.append((title, png(fig)))
    return figs


def _html_table(lines: list[str]) -> list[str]:
    """A markdown section (a "## " title, lines of text, and one "|" table) as HTML."""
    out, table_rows = [], [line for line in lines if line.startswith("|")]
    for line in lines:
        if line.startswith("## "):
            out.append(f"<h3>{html.escape(line[3:])}</h3>")
        elif line and not line.startswith("|"):
            out.append(f"<p>{html.escape(line)}</p>")
    if table_rows:
        cells = [[c.strip() for c in r.strip("|").split("|")] for r in table_rows if not r.startswith("|---")]
        out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells[0]) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:]]
        out.append("</table>")
    return out


def to_html(runs: dict[str, dict]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>slmkit report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}</style></head><body>",
             "<h1>slmkit shrink report</h1>"]
    for name, rep in runs.items():
        head, rows = table(rep)
        parts.append(f"<h2>{html.escape(rep['recipe'])} on {html.escape(str(rep['model']))} "
                     f"({html.escape(name)})</h2><table><tr>" +
                     "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
        if (line := side_by_side_line(rep)) is not None:
            parts.append("<p>" + html.escape(line).replace("**", "") + "</p>")
        parts += _html_table(loads_markdown(rep))
        parts += _html_table(gguf_markdown(rep.get("llama_cpp")))
    if len(runs) > 1 and pareto(runs):
        head, *rest = [line for line in pareto_markdown(runs).splitlines() if line.startswith("|")]
        parts.append("<h2>Pareto (size, perplexity, decode speed)</h2><table>")
        cells = lambda line: [c.strip().replace("**", "") for c in line.strip("|").split("|")]  # noqa: E731
        parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells(head)) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(r)) + "</tr>" for r in rest[1:]]
        parts.append("</table>")
    for title, data in _figures(runs):
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict, folder: str | Path) -> list[Path]:
    folder = Path(folder)
    out = []
    for name, text in (("report.json", json.dumps(report, indent=2, default=str) + "\n"),
                       ("report.md", to_markdown(report)),
                       ("report.html", to_html({folder.name: report}))):
        write_text_atomic(folder / name, text)
        out.append(folder / name)
    return out


def compare(run_dirs: list[str | Path], out: str | Path | None = None) -> tuple[str, dict]:
    """Markdown of every run's table, and (with `out`) a combined report.html there."""
    runs = {}
    for d in run_dirs:
        f = Path(d) / "report.json"
        if not f.exists():
            raise SlmkitError(f"{d} has no report.json (not a finished `slmkit shrink` run)")
        runs[Path(d).name] = json.loads(f.read_text())
    md = "\n".join(to_markdown(r) for r in runs.values())
    if len(runs) > 1:
        md += "\n" + pareto_markdown(runs)
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        write_text_atomic(o / "compare.html", to_html(runs))
        write_text_atomic(o / "compare.md", md)
    return md, runs
