"""benchmarks/RESULTS.md and the docs' result fragments (docs/results/*.md) are generated from the
committed results files: they must be what benchmarks/make_results.py writes now (no hand edits, no
figure without its JSON)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_results.py"


def test_results_md_matches_the_results_files():
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr + run.stdout


def test_results_md_is_short():
    lines = (SCRIPT.parent / "RESULTS.md").read_text().count("\n")
    assert lines < 400, f"RESULTS.md has {lines} lines; move older runs to benchmarks/history/"
