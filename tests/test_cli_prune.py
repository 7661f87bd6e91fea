"""`slmkit prune` end to end on tiny models (unstructured and structured), and its refusals."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from slmkit.cli.main import main
from slmkit.compress.prune.nm import holds_nm
from slmkit.compress.targets import all_targets
from slmkit.models import read_manifest


def test_prune_wanda_2_4_keeps_the_pattern_through_save(tiny_dir, tmp_path, capsys):
    out = tmp_path / "p"
    code = main(["prune", str(tiny_dir("llama")), str(out), "--method", "wanda", "--nm", "2:4",
                 "--calib-n", "4", "--calib-len", "64", "--save-dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    report = read_manifest(out)["report"]
    assert report["result"]["total"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for t in all_targets(model):
        assert holds_nm(t.weight(), 2, 4), t.name


def test_prune_depth_to_a_parameter_count_gives_a_smaller_standard_model(tiny_dir, tmp_path, capsys):
    from slmkit.models.tiny import tiny_model

    src = tiny_dir("qwen2")
    dense = tiny_model("qwen2").num_parameters()
    out = tmp_path / "d"
    target = dense - 1000  # one layer must go
    code = main(["prune", str(src), str(out), "--method", "depth", "--target-params", str(target),
                 "--calib-n", "4", "--calib-len", "64"])
    assert code == 0, capsys.readouterr().err
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 1
    assert model.num_parameters() <= target
    assert read_manifest(out)["report"]["result"]["removed_layers"]


@pytest.mark.parametrize("args,message", [
    (["--method", "magnitude", "--sparsity", "1.5"], "sparsity"),
    (["--method", "wanda", "--nm", "4:2"], "N"),
    (["--method", "magnitude", "--target", "0.3"], "--target does not apply to --method magnitude"),
    (["--method", "depth", "--target-params", "10"], "layer"),
])
def test_prune_refuses_bad_input_in_one_line(tiny_dir, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["prune", str(tiny_dir("llama")), str(out), "--calib-n", "4", "--calib-len", "64",
                 *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
