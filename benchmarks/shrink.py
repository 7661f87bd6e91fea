"""`slmkit shrink` acceptance: run the default recipe (and quantize-only for comparison) on the
embedded default model, each as its own `slmkit shrink` process timed end to end; then the
comparison report with the Pareto table, the acceptance numbers (wall time, final size vs bf16,
decode speed vs the bf16 original, ppl increase on both texts), and a headless-Chromium
screenshot of the comparison report.html.

    python benchmarks/shrink.py [--recipes default,quantize-only] [--runs runs/bench] [--tag _smollm2]

Re-running reuses finished stages (their wall time then comes from the stage records).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import model_arg, write_result  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="default,quantize-only")
    ap.add_argument("--runs", default="runs/bench", help="folder for one run per recipe")
    ap.add_argument("--model", type=model_arg, default=None, help="override the recipes' model")
    ap.add_argument("--speed-rounds", type=int, default=5, help="side-by-side speed rounds (0: skip)")
    ap.add_argument("--tag", default="")
    return ap.parse_args()


def run_recipe_process(recipe: str, out: Path, model: str | None) -> dict:
    cmd = [sys.executable, "-m", "slmkit", "shrink", recipe, "--out", str(out)]
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    return {"command": " ".join(cmd[2:]), "wall_s": wall,
            "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def screenshot(html: Path, png: Path) -> str | None:
    """PNG of `html` rendered by headless Chromium; returns why not when there is none."""
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        return "no chromium on PATH (apt-get install chromium)"
    tmp = png.with_suffix(".tmp.png")
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={tmp}", "--window-size=1400,2600", html.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not tmp.exists() or tmp.stat().st_size < 10_000:
        return f"chromium failed ({r.returncode}): {r.stderr[-400:]}"
    tmp.replace(png)
    return None


def side_by_side_speed(report: dict, rounds: int) -> dict:
    """Decode and prefill tok/s of the source and the final slmkit checkpoint, measured in
    alternation in this one process (`rounds` times each, 128 + 128 tokens, auto dtype per phase):
    the per-stage numbers in the report come from different moments of a long run."""
    from slmkit.eval.speed import SpeedConfig, alternating
    from slmkit.models import load

    final = [s for s in report["stages"] if s["metrics"].get("speed", {}).get("decode_tok_s")][-1]
    models = {"source": load(report["model"], "auto"), final["stage"]: load(final["output"], "auto")}
    res = alternating(models, SpeedConfig(prompt_tokens=128, new_tokens=128, repeats=1), rounds)
    med = {k: {m: v[m] for m in ("decode_tok_s", "prefill_tok_s")} for k, v in res.items()}
    return {"final": final["stage"], "rounds": rounds, "median": med,
            "decode_ratio": med[final["stage"]]["decode_tok_s"] / med["source"]["decode_tok_s"],
            "prefill_ratio": med[final["stage"]]["prefill_tok_s"] / med["source"]["prefill_tok_s"]}


def acceptance(report: dict) -> dict:
    """The issue's numbers for one run: final slmkit checkpoint (the last stage with a decode
    speed) and final artifact (the last stage) against the 00-source row."""
    stages = report["stages"]
    src = stages[0]["metrics"]
    measured = [s for s in stages if s["metrics"].get("speed", {}).get("decode_tok_s")]
    final_model, final = measured[-1], stages[-1]
    out = {"stage_seconds": sum(s.get("seconds", 0) for s in stages),   # incl. 00-source
           "final_model": final_model["stage"], "final_artifact": final["stage"],
           "size_vs_bf16": {s["stage"]: s["metrics"]["disk_mb"] / src["disk_mb"] for s in stages[1:]
                            if s["metrics"].get("disk_mb")},
           "decode_vs_source": final_model["metrics"]["speed"]["decode_tok_s"] / src["speed"]["decode_tok_s"],
           "ppl_increase": {t: final_model["metrics"]["ppl"][t]["window"] / v["window"] - 1
                            for t, v in src["ppl"].items()}}
    return out


def main() -> int:
    args = parse_args()
    from rich.console import Console

    from slmkit.recipes.report import compare, pareto

    runs_dir = Path(args.runs)
    runs_dir.mkdir(parents=True, exist_ok=True)
    process = {}
    for name in args.recipes.split(","):
        process[name] = run_recipe_process(name, runs_dir / name, args.model)
    md, reports = compare([runs_dir / n for n in args.recipes.split(",")], runs_dir / "compare")
    Console(width=200).print(md)
    acc = {name: {**acceptance(rep), **process[name]} for name, rep in reports.items()}
    for name, a in acc.items():
        print(f"{name}: process wall {a['wall_s'] / 60:.1f} min (stage records {a['stage_seconds'] / 60:.1f} min); size vs "
              f"bf16 {', '.join(f'{k} {v:.2f}x' for k, v in a['size_vs_bf16'].items())}; decode "
              f"{a['final_model']} {a['decode_vs_source']:.2f}x source; ppl increase "
              f"{', '.join(f'{Path(t).stem} {v:+.1%}' for t, v in a['ppl_increase'].items())}")
    if args.speed_rounds:
        for name, rep in reports.items():
            acc[name]["side_by_side"] = sbs = side_by_side_speed(rep, args.speed_rounds)
            print(f"{name}: side by side ({sbs['rounds']} rounds, medians): {sbs['final']} decodes "
                  f"{sbs['decode_ratio']:.2f}x and prefills {sbs['prefill_ratio']:.2f}x the source")
    shot = runs_dir / "compare" / "compare.png"
    why = screenshot(runs_dir / "compare" / "compare.html", shot)
    print(f"screenshot: {shot}" if why is None else f"no screenshot: {why}")
    payload = {"args": vars(args), "acceptance": acc, "pareto": pareto(reports),
               "screenshot": None if why else str(shot), "reports": reports}
    print(f"wrote {write_result('shrink' + args.tag, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
