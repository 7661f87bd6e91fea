"""The `slmkit` command line: error handling (one line, no traceback), convert, eval reports."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slmkit.cli.main import main

PPL_SMALL = ["--tasks", "ppl", "--ppl-protocols", "window", "--ppl-window", "64"]
SPEED_SMALL = ["--speed-prompt-tokens", "8", "--speed-new-tokens", "4", "--speed-repeats", "1",
               "--speed-warmup", "0"]


def _hf_handlers() -> list[logging.StreamHandler]:
    # transformers' own handler only (pytest's LogCaptureHandler subclasses StreamHandler)
    return [h for h in logging.getLogger("transformers").handlers
            if type(h) is logging.StreamHandler]


@pytest.fixture(scope="module", autouse=True)
def _hf_logging_outside_capsys():
    """transformers binds its log handler to whatever sys.stderr is when it is first configured;
    if that happened inside a capsys test, later warnings hit a closed stream and print a
    '--- Logging error --- Traceback' of their own. Configure it here, outside any capsys."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers")  # creates transformers' stderr handler
    for h in _hf_handlers():
        h.setStream(sys.stderr)
    yield


@contextlib.contextmanager
def _hf_logs_to(stream):
    """Send transformers' warnings to `stream` (the captured stderr), as the real CLI would."""
    saved = [(h, h.stream) for h in _hf_handlers()]
    for h, _ in saved:
        h.setStream(stream)
    try:
        yield
    finally:
        for h, old in saved:
            h.setStream(old)


def run(capsys, *argv) -> tuple[int, str, str]:
    with _hf_logs_to(sys.stderr):
        code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def error_line(err: str) -> str:
    """The single `slmkit:` message in stderr, which must be its last line (so one line long)."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    ours = [i for i, ln in enumerate(lines) if ln.startswith("slmkit:")]
    assert len(ours) == 1, f"expected one slmkit message, got stderr:\n{err}"
    assert ours[0] == len(lines) - 1, f"the error message spans several lines:\n{err}"
    assert lines[-1].startswith("slmkit: error: "), f"not a handled input error: {lines[-1]}"
    return lines[-1]


def assert_clean_error(code: int, err: str, *names: str) -> str:
    assert code != 0
    msg = error_line(err)
    for name in names:
        assert name in msg, f"{name!r} not named in: {msg}"
    return msg


def partials(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and ".partial" in p.name]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def small_txt(tmp_path):
    from pydoc_data import topics

    p = tmp_path / "small.txt"
    p.write_text(topics.topics["assert"] + "\n\n" + topics.topics["pass"], encoding="utf-8")
    return p


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    """A private copy of the tiny llama folder that a test may damage."""
    return Path(shutil.copytree(tiny_dir("llama"), tmp_path / "model_copy"))


def slmkit_script() -> str:
    script = Path(sys.executable).parent / "slmkit"
    found = str(script) if script.is_file() else shutil.which("slmkit")
    assert found, "the slmkit console script is not installed"
    return found


# ---- model input errors ------------------------------------------------------------------------
def test_missing_model_path(capsys, tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    code, _, err = run(capsys, "info", missing)
    assert_clean_error(code, err, str(missing), "does not exist")


def test_folder_without_config_json(capsys, tmp_path):
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "README.md").write_text("hello", encoding="utf-8")
    code, _, err = run(capsys, "info", folder)
    assert_clean_error(code, err, str(folder), "config.json")


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_safetensors(capsys, model_copy, damage):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07garbage" * 64)
    code, _, err = run(capsys, "info", model_copy)
    assert_clean_error(code, err, str(model_copy))


def test_corrupt_gguf(capsys, tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"XXXX" + os.urandom(64))  # garbage that cannot start with the GGUF magic
    code, _, err = run(capsys, "info", bad)
    assert_clean_error(code, err, str(bad))


def test_truncated_gguf_with_valid_magic(capsys, tmp_path):
    bad = tmp_path / "y.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"garbage")
    code, _, err = run(capsys, "info", bad)
    assert_clean_error(code, err, str(bad))


@pytest.fixture
def unknown_arch(model_copy):
    cfg_path = model_copy / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["model_type"] = "not_a_real_arch"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    return model_copy


def test_unknown_architecture_is_a_clear_error(capsys, unknown_arch):
    code, _, err = run(capsys, "info", unknown_arch)
    assert code == 1
    assert "Traceback" not in err
    assert "slmkit: error: " in err and "internal error" not in err
    msg = err[err.index("slmkit: error: "):]
    assert str(unknown_arch) in msg and "not_a_real_arch" in msg


def test_unknown_architecture_message_is_one_line(capsys, unknown_arch):
    code, _, err = run(capsys, "info", unknown_arch)
    assert_clean_error(code, err, str(unknown_arch), "not_a_real_arch")


def test_unknown_hub_id_offline_message_is_one_line(capsys):
    code, _, err = run(capsys, "info", "slmkit-test-org/no-such-model")
    assert_clean_error(code, err, "slmkit-test-org/no-such-model", "HF_HUB_OFFLINE")


def test_debug_shows_traceback(capsys, tmp_path):
    missing = tmp_path / "missing_model"
    code, _, err = run(capsys, "--debug", "info", missing)
    assert code == 1
    assert "Traceback" in err and "SlmkitError" in err
    assert err.rstrip().splitlines()[-1].startswith("slmkit: error: ")
    assert str(missing) in err.rstrip().splitlines()[-1]


def test_console_script_corrupt_model_no_traceback(model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([slmkit_script(), "info", str(model_copy)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("slmkit: error: ") and str(model_copy) in lines[0]
    assert proc.stdout == ""


# ---- eval input errors -------------------------------------------------------------------------
def test_eval_empty_data(capsys, tiny_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n\t \n", encoding="utf-8")
    out = tmp_path / "report"
    code, _, err = run(capsys, "eval", tiny_dir("llama"), *PPL_SMALL, "--data", empty, "--out", out)
    assert_clean_error(code, err, str(empty))
    assert not out.exists()  # no report written for a failed run


def test_eval_window_longer_than_context(capsys, tiny_dir, small_txt):
    from transformers import AutoConfig

    ctx = AutoConfig.from_pretrained(tiny_dir("llama")).max_position_embeddings
    window = ctx * 4
    code, _, err = run(capsys, "eval", tiny_dir("llama"), "--tasks", "ppl", "--ppl-protocols",
                       "window", "--ppl-window", window, "--data", small_txt)
    assert_clean_error(code, err, "window", str(window), str(ctx))


@pytest.mark.parametrize("args", [["eval", "MODEL", "--ppl-window", "abc"],
                                  ["quantize", "MODEL", "OUT", "--bits", "3.5"],
                                  ["quantize", "MODEL", "OUT", "--bogus", "1"]])
def test_a_bad_option_value_is_one_line_not_a_usage_dump(capsys, tiny_dir, tmp_path, args):
    args = [str(tiny_dir("llama")) if a == "MODEL" else str(tmp_path / "o") if a == "OUT" else a
            for a in args]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("slmkit: error: ")
    assert args[-2] in err and args[-1] in err and f"slmkit {args[0]} --help" in err


def test_compression_help_lists_the_chosen_methods_options_with_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    gptq = capsys.readouterr().out
    assert "options of --method gptq" in gptq and "--damp DAMP" in gptq and "--n-grid" not in gptq
    with pytest.raises(SystemExit):
        main(["quantize", "--method", "awq", "--help"])
    awq = " ".join(capsys.readouterr().out.split())
    assert "--n-grid" in awq and "--damp DAMP" not in awq and "--method M --help" in awq
    assert "(default: loss)" in awq


def test_eval_unknown_task_lists_tasks(capsys, tiny_dir):
    from slmkit.eval.tasks import TASKS

    code, _, err = run(capsys, "eval", tiny_dir("llama"), "--tasks", "nonsense")
    assert code == 1
    msg = assert_clean_error(code, err, "nonsense")
    for name in TASKS.names():
        assert name in msg.split("nonsense", 1)[1]


# ---- convert -----------------------------------------------------------------------------------
def test_convert_to_new_folder(capsys, tiny_dir, tmp_path):
    import torch

    from slmkit.models import load

    src = tiny_dir("llama")
    parent = tmp_path / "outputs"
    parent.mkdir()
    out = parent / "converted"
    code, stdout, err = run(capsys, "convert", src, out)
    assert code == 0, err
    assert (out / "config.json").is_file() and (out / "slmkit.json").is_file()
    manifest = json.loads((out / "slmkit.json").read_text())
    assert manifest["steps"][0]["convert"]["source"] == str(src)
    assert str(out) in stdout
    assert sorted(p.name for p in parent.iterdir()) == ["converted"]  # nothing left beside it
    # the converted weights are the source weights in the default dtype (bfloat16)
    a, _ = load(src, "float32")
    b, _ = load(out, "float32")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].to(torch.bfloat16).float(), sb[k]), k


def test_convert_to_existing_folder_fails_untouched(capsys, tiny_dir, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious", encoding="utf-8")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01\x02")
    before = snapshot(out)
    code, _, err = run(capsys, "convert", tiny_dir("llama"), out)
    assert_clean_error(code, err, str(out), "exists")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_convert_failed_load_leaves_no_partial_output(capsys, model_copy, tmp_path):
    (model_copy / "model.safetensors").write_bytes(b"garbage" * 10)
    parent = tmp_path / "outputs"
    parent.mkdir()
    out = parent / "converted"
    code, _, err = run(capsys, "convert", model_copy, out)
    assert_clean_error(code, err, str(model_copy))
    assert not out.exists()
    assert partials(parent) == [] and list(parent.iterdir()) == []


def test_convert_out_below_a_file_is_an_input_error(capsys, tiny_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x", encoding="utf-8")
    code, _, err = run(capsys, "convert", tiny_dir("llama"), blocker / "out")
    assert_clean_error(code, err, str(blocker))
    assert blocker.read_text(encoding="utf-8") == "x"
    assert partials(tmp_path) == []


# ---- eval reports ------------------------------------------------------------------------------
def test_eval_one_model_writes_json_and_md(capsys, tiny_dir, small_txt, tmp_path):
    from slmkit.data import load_text

    model = str(tiny_dir("llama"))
    out = tmp_path / "report"
    code, stdout, err = run(capsys, "eval", model, "--tasks", "ppl,speed", "--ppl-protocols",
                            "window", "--ppl-window", "64", "--data", small_txt, *SPEED_SMALL,
                            "--out", out)
    assert code == 0, err
    assert (out / "report.json").is_file() and (out / "report.md").is_file()
    assert not (out / "report.png").exists()  # the plot is for 2+ models
    report = json.loads((out / "report.json").read_text())
    m = report["models"][model]
    ppl = m["ppl"]["window"]["token_perplexity"]
    assert math.isfinite(ppl) and ppl > 1
    assert m["ppl"]["window"]["window"] == 64
    assert m["ppl"]["data"]["sha256"] == load_text(str(small_txt)).sha256
    assert m["speed"]["decode_tok_s"] > 0 and m["speed"]["prefill_tok_s"] > 0
    assert model in (out / "report.md").read_text()
    assert str(out / "report.json") in stdout
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_eval_two_models_also_writes_png(capsys, tiny_dir, small_txt, tmp_path):
    first = str(tiny_dir("llama"))
    second = str(shutil.copytree(first, tmp_path / "llama_copy"))
    out = tmp_path / "report"
    code, _, err = run(capsys, "eval", first, second, *PPL_SMALL, "--data", small_txt, "--out", out)
    assert code == 0, err
    for name in ("report.json", "report.md", "report.png"):
        assert (out / name).is_file(), name
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == [first, second]
    # same weights, same data: the two columns agree
    a, b = (report["models"][k]["ppl"]["window"]["token_perplexity"] for k in (first, second))
    assert a == pytest.approx(b, rel=1e-6)
    md = (out / "report.md").read_text()
    assert first in md and second in md


def test_info_describes_a_model(capsys, tiny_dir):
    code, out, _ = run(capsys, "info", tiny_dir("phi3"))
    assert code == 0
    for expected in ("Phi3ForCausalLM", "phi3", "adapter", "yes", "auto dtype here"):
        assert expected in out


def test_every_subcommand_prints_its_help(capsys):
    """argparse %-formats help strings: a field help with a bare '%' must not crash --help."""
    from slmkit.cli.main import MODULE_COMMANDS

    for command in ["info", "eval", "convert", *MODULE_COMMANDS]:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and f"usage: slmkit {command}" in out, command
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    assert "20-60% of the bytes" in capsys.readouterr().out


@pytest.mark.parametrize("argv, names", [
    (["shrink", "default", "--budget", "size=2x"], ["size=2x", "below 1x"]),
    (["shrink", "default", "--budget", "speed=2x"], ["speed=2x", "ppl-rise="]),
    (["shrink", "default", "--budget", "size=0.35x", "--dry-run"], ["positional argument is the model"]),
])
def test_a_bad_budget_is_refused_before_any_work(capsys, argv, names):
    code, _, err = run(capsys, *argv)
    assert_clean_error(code, err, *names)
