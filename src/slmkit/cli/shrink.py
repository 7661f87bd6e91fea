"""`slmkit shrink RECIPE [--model M] [--out RUN] [--dry-run]` and `slmkit report RUN...`.

A recipe (YAML, see slmkit/recipes/shipped/ and slmkit.recipes.schema) chains stages; each writes its model and
measurements under RUN/NN-kind/. Re-running skips unchanged stages and resumes an interrupted
one; the report (report.json, .md, .html) is rewritten after every run.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from slmkit.recipes import load_recipe, plan, run_recipe
from slmkit.recipes.report import compare, table


def add_parser(sub, argv=()):
    s = sub.add_parser("shrink", help="run a recipe: prune -> recover -> quantize -> export -> eval",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("recipe", help="recipe YAML, or the name of a shipped one (default, quantize-only, ...)")
    s.add_argument("--model", default=None, help="override the recipe's model")
    s.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    s.add_argument("--dry-run", action="store_true", help="print the plan with estimates, run nothing")
    r = sub.add_parser("report", help="compare finished shrink runs (tables + HTML)")
    r.add_argument("runs", nargs="+", help="run folders")
    r.add_argument("--out", default=None, help="write compare.html / compare.md here")
    return s


def run(ns) -> int:
    from rich.console import Console
    from rich.table import Table

    if ns.command == "report":
        md, _ = compare(ns.runs, ns.out)
        print(md)
        return 0
    recipe = load_recipe(ns.recipe)
    if ns.model:
        recipe = dataclasses.replace(recipe, model=ns.model)
    run_dir = Path(ns.out or Path("runs") / recipe.name)
    console = Console()
    if ns.dry_run:
        t = Table(title=f"plan: {recipe.name} on {recipe.model} -> {run_dir}")
        for c in ("stage", "done", "est. seconds", "est. memory GB"):
            t.add_column(c)
        for row in plan(recipe, run_dir):
            t.add_row(row["stage"], "yes" if row["done"] else "-", str(row["est_seconds"]),
                      str(row["est_memory_gb"]))
        console.print(t)
        return 0
    report = run_recipe(recipe, run_dir, log=lambda m: console.print(m))
    head, rows = table(report)
    t = Table(title=f"{recipe.name} on {recipe.model}")
    for h in head:
        t.add_column(h, justify="left" if h == "stage" else "right")
    for r in rows:
        t.add_row(*r)
    console.print(t)
    print(f"wrote {run_dir}/report.html")
    return 0
