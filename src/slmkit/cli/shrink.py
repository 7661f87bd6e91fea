"""`slmkit shrink RECIPE [--model M] [--out RUN] [--dry-run]`, `slmkit shrink MODEL --budget
size=0.35x[,decode=2x][,ppl-rise=5%] [--out RUN]` and `slmkit report RUN...`.

A recipe (YAML, see slmkit/recipes/shipped/ and slmkit.recipes.schema) chains stages; each writes its model and
measurements under RUN/NN-kind/. Re-running skips unchanged stages and resumes an interrupted
one; the report (report.json, .md, .html) is rewritten after every run.

With --budget, the positional argument is a model, and a search over calibrated GGUFs
(slmkit.recipes.search) picks the best one within the budget: size as a fraction of the source's
bf16 GGUF, decode speed as a multiple of the source's (both measured by llama.cpp in the run),
perplexity rise on the worse of the evaluation texts. It writes RUN/model.gguf, search.json and
search.md, and resumes when re-run. It needs the llamacpp extra.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.recipes import load_recipe, plan, run_recipe
from slmkit.recipes.report import compare, table


def add_parser(sub, argv=()):
    s = sub.add_parser("shrink", help="run a recipe: prune -> recover -> quantize -> export -> eval",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("recipe", help="recipe YAML, or the name of a shipped one (default, quantize-only, "
                   "...); with --budget, the model to search for (default, a folder, a hub id)")
    s.add_argument("--budget", default=None,
                   help="search for the best calibrated GGUF within e.g. size=0.35x,decode=2x,ppl-rise=5%%")
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

    from slmkit.cli.show import plain_table

    if ns.command == "report":
        md, _ = compare(ns.runs, ns.out)
        print(md)
        return 0
    if ns.budget is not None:
        return _search(ns)
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
    plain_table(f"{recipe.name} on {recipe.model}", head, rows)
    print(f"wrote {run_dir}/report.html")
    return 0


def _search(ns) -> int:
    from slmkit.recipes.budget import parse_budget
    from slmkit.recipes.search import search, search_markdown

    if ns.model or ns.dry_run:
        raise SlmkitError("with --budget the positional argument is the model; --model and --dry-run "
                          "belong to recipes")
    budget = parse_budget(ns.budget)
    run_dir = Path(ns.out or Path("runs") / f"search-{Path(ns.recipe).name}")
    state = search(ns.recipe, budget, run_dir)
    print(search_markdown(state))
    print(f"wrote {run_dir}/model.gguf" if state.get("chosen") else f"nothing meets {budget}; see {run_dir}/search.md")
    return 0 if state.get("chosen") else 1
