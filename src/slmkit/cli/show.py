"""Terminal output for the CLI (rich tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from slmkit.eval.report import Report, lookup
from slmkit.eval.tasks import model_info
from slmkit.models.arch import ARCHS, supported
from slmkit.models.dtype import describe_policy
from slmkit.models.introspect import context_length

console = Console()


def plain_table(title: str, head: list[str], rows: list[list[str]]) -> None:
    """A table as rich draws it on a terminal, as Markdown elsewhere (a log keeps every cell whole)."""
    if console.is_terminal:
        t = Table(title=title)
        for h in head:
            t.add_column(h, justify="left" if h == head[0] else "right")
        for r in rows:
            t.add_row(*r)
        console.print(t)
        return
    print(title)
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def print_metrics(report: Report) -> None:
    table = Table(title=report.title)
    table.add_column("metric")
    for name in report.models:
        table.add_column(name, justify="right")
    for path, label, fmt in report.columns():
        table.add_row(label, *(report.cell(m, path, fmt) for m in report.models.values()))
    console.print(table)
    for name, m in report.models.items():
        ppl = m.get("ppl")
        if ppl:
            d = ppl["data"]
            console.print(f"[dim]{name}: text {d['name']} ({d['docs']} docs, sha256 {d['sha256'][:12]})"
                          + "".join(f"; {k}: {lookup(ppl, k + '.tokens_scored')} tokens scored"
                                    for k in ("window", "rolling") if k in ppl) + "[/dim]")
        speed = m.get("speed")
        if speed:
            console.print(f"[dim]{name}: speed prefill in {speed['prefill_dtype']}, decode in "
                          f"{speed['decode_dtype']}; {speed['prompt_tokens']}-token prompt, "
                          f"{speed['new_tokens']} new tokens, median of {speed['repeats']}[/dim]")
        for task, res in (m.get("lm_eval") or {}).items():
            shown = {k: v for k, v in res.items() if isinstance(v, float)}
            console.print(f"lm-eval {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))


def print_info(model, tokenizer) -> None:
    info = model_info(model)
    cfg = model.config
    mt = info["model_type"]
    policy = describe_policy()
    rows = [
        ("source", f"{(model._slmkit_source or {}).get('kind')}: {info['source']}"),
        ("class", type(model).__name__),
        ("model_type", mt),
        ("adapter", "yes" if mt in ARCHS else f"none (supported: {', '.join(supported())})"),
        ("layers", str(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", "?")))),
        ("hidden size", str(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", "?")))),
        ("vocab", str(getattr(cfg, "vocab_size", "?"))),
        ("context", str(context_length(model))),
        ("params", f"{info['params'] / 1e6:.1f}M"),
        ("dtype (loaded)", info["dtype"]),
        ("on disk", "-" if info["disk_mb"] is None else f"{info['disk_mb']:.1f} MB"),
        ("chat template", "yes" if getattr(tokenizer, "chat_template", None) else "no"),
        ("auto dtype here", f"prefill {policy['prefill']}, decode {policy['decode']} "
                            f"(native bf16: {'yes' if policy['native_bf16'] else 'no'})"),
    ]
    table = Table(show_header=False)
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
