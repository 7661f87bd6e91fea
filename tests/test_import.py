"""`import slmkit` is fast and imports no heavy or optional backend."""

import subprocess
import sys

HEAVY = ["torch", "transformers", "lm_eval", "matplotlib", "datasets", "gguf", "numpy", "rich"]


def test_import_is_light_and_fast():
    code = ("import sys, time; t = time.perf_counter(); import slmkit, slmkit.models, slmkit.data, "
            "slmkit.registry; dt = time.perf_counter() - t; "
            f"print(dt); print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt, loaded = out.stdout.splitlines()
    assert loaded == "", f"import slmkit pulled in: {loaded}"
    assert float(dt) < 1.0
