"""Inputs a compression command checks: a damaged checkpoint, and bad options, existing outputs and
missing calibration files, each reported before the model is read."""

from __future__ import annotations

import pytest
from test_cli import assert_clean_error, run

from slmkit.cli.main import main


def test_a_damaged_quantized_checkpoint_names_its_weights_file(capsys, tiny_dir, tmp_path):
    q = tmp_path / "q"
    assert main(["quantize", str(tiny_dir("llama")), str(q), "--method", "rtn", "--group-size", "32"]) == 0
    weights = q / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    code, _, err = run(capsys, "info", q)
    assert_clean_error(code, err, str(weights), "damaged")


@pytest.mark.parametrize("args,message", [
    # a bad config, an existing output and a missing calibration file are each reported before the
    # model is read: the model path given does not exist, and the error is still theirs
    (["prune", "MISSING", "OUT", "--method", "wanda", "--sparsity", "1.5"], "sparsity"),
    (["quantize", "MISSING", "EXISTING", "--method", "rtn"], "already exists"),
    (["quantize", "MISSING", "OUT", "--method", "gptq", "--calib", "nowhere.txt"], "nowhere.txt"),
])
def test_inputs_are_checked_before_the_model_is_loaded(capsys, tmp_path, args, message):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "x").write_text("taken")
    names = {"MISSING": tmp_path / "no-such-model", "OUT": tmp_path / "out", "EXISTING": existing}
    code, _, err = run(capsys, *[names.get(a, a) for a in args])
    msg = assert_clean_error(code, err, message)
    assert "no-such-model" not in msg and not (tmp_path / "out").exists()
