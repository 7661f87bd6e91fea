"""slmkit installed from its wheel, outside the checkout, works: the shipped recipes and the native
kernel's C source are package data, and nothing is found through the source tree.

The wheel is built from a copy of the checkout (no network, no build isolation) and installed with
`pip install --no-index --no-deps` into a fresh venv made with `--system-site-packages`. That venv's
system site is the base interpreter's, which lacks torch and the other dependencies when the tests
run inside a venv, so a .pth file appends the running environment's site-packages after the new
venv's own: its packages are visible, its .pth files (the editable slmkit among them) are not
processed, and the wheel's slmkit comes first on the path.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(venv folder, a working folder outside the checkout) with slmkit installed from its wheel."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src-copy"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.so")
    shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    wheel = next((tmp / "dist").glob("slmkit-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=tmp)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp).strip())
    (purelib / "_slmkit_test_outer_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--no-deps",
          str(wheel)], cwd=tmp)
    work = tmp / "work"
    work.mkdir()
    return venv, work


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}


def test_the_wheel_carries_its_package_data_and_imports_from_the_venv(installed):
    venv, work = installed
    code = ("import slmkit, slmkit.recipes, slmkit.runtime.native as n; from pathlib import Path; "
            "print(slmkit.__file__); print(n.SOURCE.is_file()); "
            "print(','.join(sorted(slmkit.recipes.shipped_recipes())))")
    file, has_c, recipes = _run([str(venv / "bin" / "python"), "-c", code], cwd=work, env=_env()).split()
    assert Path(file).is_relative_to(venv), f"slmkit imported from {file}, not from the venv"
    assert has_c == "True", "the native kernel's C source is not in the wheel"
    assert {"default", "quantize-only"} <= set(recipes.split(","))


def test_installed_cli_plans_the_default_recipe_and_quantizes(installed, default_model, tmp_path):
    venv, work = installed
    slmkit = str(venv / "bin" / "slmkit")
    plan = _run([slmkit, "shrink", "default", "--dry-run"], cwd=work, env=_env())
    assert "plan: default" in plan and "quantize" in plan
    out = tmp_path / "rtn"
    _run([slmkit, "quantize", "default", str(out), "--method", "rtn"], cwd=work, env=_env())
    assert (out / "slmkit.json").is_file() and (out / "config.json").is_file()
