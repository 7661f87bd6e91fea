"""`slmkit quantize` end to end on tiny models, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch

from slmkit.cli.main import main
from slmkit.models import load, read_manifest
from slmkit.runtime.kernels import Int4Linear, Int8Linear


def test_quantize_gptq_with_override_writes_a_reloadable_checkpoint(tiny_dir, tmp_path, capsys):
    out = tmp_path / "q"
    code = main(["quantize", str(tiny_dir("qwen2")), str(out), "--method", "gptq", "--bits", "4",
                 "--group-size", "32", "--calib-n", "4", "--calib-len", "64", "--block-size", "32",
                 "--override", "down:bits=8,group_size=none", "--save-dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    manifest = read_manifest(out)
    step = manifest["steps"][-1]
    assert step["quantize"] == "gptq" and step["config"]["overrides"] == {"down": {"bits": 8, "group_size": None}}
    assert manifest["report"]["calibration"]["n"] == 4
    assert manifest["report"]["result"]["kernels"] == {"Int4Linear": 12, "Int8Linear": 2}
    model, _ = load(out, dtype="float32")
    kinds = {type(m) for m in model.modules()}
    assert {Int4Linear, Int8Linear} <= kinds
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"


def test_quantize_awq_default_records_the_loss_objective(tiny_dir, tmp_path, capsys):
    """`--method awq` with its defaults: the loss objective (gradients on --gradient-rows rows);
    every site's predicted loss change is in slmkit.json and the checkpoint reloads."""
    out = tmp_path / "q"
    code = main(["quantize", str(tiny_dir("llama")), str(out), "--method", "awq", "--bits", "4",
                 "--group-size", "32", "--calib-n", "4", "--calib-len", "64", "--gradient-rows", "2",
                 "--n-grid", "4", "--save-dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    step = read_manifest(out)["steps"][-1]
    assert step["config"]["scale_objective"] == "loss"
    assert step["config"]["gradient_rows"] == 2
    assert step["sites"] and all(r["predicted_dl"] <= r["predicted_dl_rtn"] for r in step["sites"])
    model, _ = load(out, dtype="float32")
    assert any(isinstance(m, Int4Linear) for m in model.modules())


@pytest.mark.parametrize("args,message", [
    (["--method", "rtn", "--damp", "0.1"], "--damp does not apply to --method rtn"),
    (["--method", "rtn", "--bits", "1"], "bits must be"),
    (["--method", "rtn", "--override", "down:bitz=8"], "unknown setting"),
    (["--method", "gptq", "--calib-len", "64", "--calib", "nonexistent-file.txt"], "nonexistent-file.txt"),
])
def test_quantize_refuses_bad_input_in_one_line(tiny_dir, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["quantize", str(tiny_dir("llama")), str(out), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
