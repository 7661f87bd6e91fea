"""The documentation site (mkdocs.yml, docs/) builds with `mkdocs build --strict`, and its generated
parts are current: a broken link, an API entry that no longer exists, a stale CLI help page or a
shipped recipe or results topic left off the pages fails here, in CI."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SITE_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def missing_site_tools() -> list[str]:
    out = []
    for name in SITE_TOOLS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            out.append(name)
    return out


def env_with_src() -> dict:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's banner about MkDocs 2.0
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_site_builds_strict(tmp_path):
    missing = missing_site_tools()
    if missing:
        pytest.skip(f"mkdocs, mkdocs-material and mkdocstrings[python] are not installed ({', '.join(missing)} "
                    "missing): pip install -e '.[docs]'")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=ROOT, env=env_with_src(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-6000:] + run.stdout[-2000:]
    assert (tmp_path / "site" / "quantize" / "index.html").is_file()


def test_cli_help_and_recipe_stages_are_current():
    header = (DOCS / "cli-help.md").read_text().splitlines()[0]
    written_with = re.search(r"Python (\d+\.\d+)", header).group(1)
    if written_with != f"{sys.version_info.major}.{sys.version_info.minor}":
        pytest.skip(f"docs/cli-help.md was written with Python {written_with}'s argparse, whose layout "
                    "differs between versions; run the check under that version")
    run = subprocess.run([sys.executable, str(DOCS / "gen_cli.py"), "--check"], cwd=ROOT, env=env_with_src(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr + run.stdout


def first_sh_block(text: str) -> str:
    return re.search(r"```sh\n(.*?)```", text, re.S).group(1)


def test_getting_started_shows_the_readmes_two_commands():
    assert first_sh_block((DOCS / "index.md").read_text()) == first_sh_block((ROOT / "README.md").read_text())


def test_every_shipped_recipe_is_on_the_recipes_page():
    shipped = [p for d in (ROOT / "src/slmkit/recipes/shipped", ROOT / "recipes") for p in d.glob("*.yaml")]
    assert shipped
    page = (DOCS / "recipes.md").read_text()
    left_out = [p.name for p in shipped if f'--8<-- "{p.name}"' not in page]
    assert not left_out, f"add these shipped recipes to docs/recipes.md: {left_out}"


def test_every_results_topic_is_on_a_page():
    pages = "".join(p.read_text() for p in DOCS.glob("*.md"))
    topics = sorted(p.name for p in (DOCS / "results").glob("*.md"))
    assert topics
    left_out = [t for t in topics if f'--8<-- "docs/results/{t}"' not in pages]
    assert not left_out, f"include these results fragments in a capability page: {left_out}"
