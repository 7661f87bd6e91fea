"""The budgeted search on a tiny model: cheap scores for every rung, the promising ones run fully,
the Pareto front and the chosen GGUF, and a re-run that measures nothing again."""

from __future__ import annotations

import importlib.util
import json

import pytest

from slmkit.errors import SlmkitError
from slmkit.recipes.budget import parse_budget
from slmkit.recipes.schema import Calibration, Evaluation
from slmkit.recipes.search import SearchConfig, search

needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                    reason="llama-cpp-python (slmkit[llamacpp]) is not installed")
FAST = SearchConfig(ladder=(4.5, 5.5, 8.5), full=2, cheap_tokens=128, rounds=2,
                    calibration=Calibration(spec="embedded", n=4, length=64),
                    evaluation=Evaluation(texts=["default"], ppl_tokens=300, rolling=False, mc=None,
                                          speed_prompt=8, speed_new_tokens=4))


@needs_llamacpp
def test_the_search_chooses_the_best_candidate_within_the_budget_and_resumes(tiny_dir, tmp_path):
    model = str(tiny_dir("llama"))
    logs: list[str] = []
    state = search(model, parse_budget("size=0.6x"), tmp_path / "run", FAST, log=logs.append)
    rungs = state["rungs"]
    assert list(rungs) == ["bpw-4.5", "bpw-5.5", "bpw-8.5"]
    sizes = [rungs[n]["cheap"]["bytes"] for n in rungs]
    assert sizes == sorted(sizes)                                   # more bits, bigger files
    dl = [rungs[n]["predicted_dl"] for n in rungs]
    assert dl == sorted(dl, reverse=True)                           # ... and less predicted loss
    source = state["rows"]["source (bf16)"]["bytes"]
    fits = [n for n in rungs if rungs[n]["cheap"]["bytes"] / source <= 0.6]
    assert state["promising"] and set(state["promising"]) <= set(fits)
    assert state["chosen"] in [f"slmkit {n}" for n in state["promising"]]
    chosen = state["rows"][state["chosen"]]
    assert chosen["bytes"] / source <= 0.6 and (tmp_path / "run" / "model.gguf").stat().st_size == chosen["bytes"]
    assert set(state["rows"]) >= {"source (bf16)", "llama.cpp Q8_0", "llama.cpp Q4_K_M", "llama.cpp Q4_0"}
    md = (tmp_path / "run" / "search.md").read_text()
    assert "**chosen**" in md and "bpw-5.5" in md
    assert json.loads((tmp_path / "run" / "search.json").read_text())["chosen"] == state["chosen"]
    logs.clear()
    again = search(model, parse_budget("size=0.6x"), tmp_path / "run", FAST, log=logs.append)
    assert again["chosen"] == state["chosen"] and not any("GPTQ" in m or "evaluating" in m for m in logs)


@needs_llamacpp
def test_a_budget_nothing_meets_is_refused_with_the_smallest_candidate(tiny_dir, tmp_path):
    with pytest.raises(SlmkitError, match="loosen the budget"):
        search(str(tiny_dir("llama")), parse_budget("size=0.05x"), tmp_path / "run", FAST, log=lambda m: None)
