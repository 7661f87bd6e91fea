"""The one training loop: schedule, deterministic batches, learning, logging, exact resume after a
real kill, and a 2-process DDP run (under torchrun and under accelerate launch) that matches the
single-process run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.models.tiny import tiny_model
from slmkit.train import IGNORE, Batches, CausalLM, TrainConfig, evaluate, train
from slmkit.train.schedule import lr_factor

SCRIPT = Path(__file__).with_name("train_script.py")
IDS = torch.randint(3, 500, (16, 24), generator=torch.Generator().manual_seed(1))


def test_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, 100, 10, "cosine", 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))           # rising during warm-up
    assert all(a >= b for a, b in zip(f[10:], f[11:]))            # then never rising
    assert f[-1] == pytest.approx(0.1)
    lin = [lr_factor(s, 100, 0, "linear", 0.0) for s in range(100)]
    assert lin[0] == 1.0 and lin[-1] == pytest.approx(0.0) and lin[50] == pytest.approx(0.5, abs=0.01)
    assert lr_factor(70, 100, 5, "constant") == 1.0


def test_batches_are_a_function_of_their_index_and_split_across_ranks():
    data = Batches(IDS)
    a, b = data.batch(3, 4, seed=0), data.batch(3, 4, seed=0)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(data.batch(3, 4, seed=1)["input_ids"], a["input_ids"])
    epoch = torch.cat([data.batch(i, 4, seed=0)["input_ids"] for i in range(4)])
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, IDS.tolist()))  # each row once
    r0, r1 = data.batch(1, 2, 0, rank=0, world=2), data.batch(1, 2, 0, rank=1, world=2)
    both = torch.cat([r0["input_ids"], r1["input_ids"]])
    assert torch.equal(both, data.batch(1, 4, 0)["input_ids"])  # ranks split the same rows
    with pytest.raises(SlmkitError, match="fewer than one batch"):
        Batches(IDS[:3]).per_epoch(4)
    with pytest.raises(SlmkitError, match="must match"):
        Batches(IDS, labels=IDS[:, :5])


def test_bad_settings_are_refused():
    for kwargs, match in [({"steps": 0}, "steps"), ({"lr": 0}, "lr"), ({"min_lr_ratio": 2}, "min_lr_ratio"),
                          ({"max_grad_norm": -1}, "max_grad_norm"), ({"grad_accum": 0}, "grad_accum")]:
        with pytest.raises(SlmkitError, match=match):
            TrainConfig(**kwargs)


def test_training_lowers_the_loss_and_leaves_log_and_curve(tmp_path):
    model = tiny_model("qwen2", seed=0)
    data, held = Batches(IDS[:12]), Batches(IDS[12:])
    before = evaluate(model, CausalLM(), data, 4, autocast=False)
    summary = train(model, CausalLM(), data, TrainConfig(steps=30, batch_size=4, lr=3e-3, eval_every=10),
                    tmp_path, eval_data=held)
    after = evaluate(model, CausalLM(), data, 4, autocast=False)
    assert after < 0.7 * before                                   # it learned the training rows
    assert summary["steps"] == 30 and summary["tokens"] == 30 * 4 * 24 and summary["tok_s"] > 0
    records = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 31))
    assert [r["step"] for r in records if "eval_loss" in r] == [10, 20, 30]
    assert all(r["grad_norm"] > 0 and r["lr"] > 0 for r in records if "loss" in r)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not model.training


def test_prompt_tokens_labelled_ignore_are_not_scored():
    model = tiny_model("llama", seed=0)
    labels = IDS[:4].clone()
    labels[:, :12] = IGNORE
    batch = {"input_ids": IDS[:4], "labels": labels}
    loss, _ = CausalLM().loss(model, batch)
    logits = model(IDS[:4]).logits
    ref = torch.nn.functional.cross_entropy(logits[:, 11:-1].flatten(0, 1), IDS[:4, 12:].flatten())
    assert torch.allclose(loss, ref, atol=1e-6)


def run_script(out, steps, *extra, launcher=(sys.executable,), check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*launcher, str(SCRIPT), str(out), str(steps), *extra], env=env,
                          capture_output=True, text=True, timeout=300, check=check)


def losses(folder):
    return [(r["step"], r["loss"]) for r in map(json.loads, (folder / "train_log.jsonl").read_text().splitlines())
            if "loss" in r]


def test_killed_run_resumes_on_the_uninterrupted_trajectory(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_script(straight, 8)
    crash = run_script(killed, 8, "--kill-at", "5", check=False)
    assert crash.returncode == -9, crash.stderr[-2000:]            # SIGKILL: no clean shutdown
    assert [s for s, _ in losses(killed)] == [1, 2, 3, 4, 5]       # step 5 logged, checkpoint at 4
    run_script(killed, 8)                                          # resumes from step 4
    assert losses(killed) == losses(straight)                      # exactly the same numbers
    a, b = torch.load(straight / "final_state.pt"), torch.load(killed / "final_state.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


LAUNCHERS = {
    "torchrun": (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_port", "29517"),
    # on a CPU-only machine accelerate's --multi_gpu starts N gloo processes; --cpu starts only one
    "accelerate": (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--main_process_port", "29518"),
}


@pytest.mark.parametrize("launch", sorted(LAUNCHERS))
def test_two_process_ddp_matches_one_process_with_the_same_rows(tmp_path, launch):
    one, two = tmp_path / "one", tmp_path / "two"
    run_script(one, 4, "--batch-size", "4")
    launcher = LAUNCHERS[launch]
    r = run_script(two, 4, "--batch-size", "2", launcher=launcher, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = torch.load(one / "final_state.pt")
    for name in ("final_state.pt", "final_state_rank1.pt"):
        got = torch.load(two / name)
        for k in ref:
            assert torch.allclose(got[k], ref[k], atol=2e-5, rtol=1e-4), (name, k)
    l1, l2 = losses(one), losses(two)
    assert [s for s, _ in l2] == [1, 2, 3, 4]                      # logged once, by rank 0,
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(l1, l2))  # as the mean over ranks


def _checkpointing_on(model) -> bool:
    flag = getattr(type(model), "is_activation_checkpointing", None)
    return bool(model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing)


def test_gradient_checkpointing_gives_the_same_training_step():
    ids = torch.randint(3, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    losses, weights = {}, {}
    for ckpt in (False, True):
        model = tiny_model("llama", seed=2)
        cfg = TrainConfig(steps=2, batch_size=2, lr=1e-3, gradient_checkpointing=ckpt)
        seen = []
        losses[ckpt] = train(model, CausalLM(), Batches(ids), cfg,
                             callback=lambda step, rec, m=model, seen=seen: seen.append(_checkpointing_on(m)))["final_loss"]
        assert seen == [ckpt, ckpt]                           # on while training when asked
        assert not _checkpointing_on(model)           # switched off again afterwards
        weights[ckpt] = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    assert abs(losses[True] - losses[False]) < 1e-5
    assert torch.allclose(weights[True], weights[False], atol=1e-6)


def test_fused_adamw_is_the_default_and_takes_the_same_steps(tmp_path):
    ids = torch.randint(3, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    losses, weights = {}, {}
    for fused in (True, False):
        model = tiny_model("llama", seed=2)
        cfg = TrainConfig(steps=3, batch_size=2, lr=1e-3, weight_decay=0.1, fused_optimizer=fused,
                          autocast="off")          # float32: bf16 rounding would amplify float noise
        losses[fused] = train(model, CausalLM(), Batches(ids), cfg, tmp_path / str(fused))["final_loss"]
        weights[fused] = model.model.layers[0].mlp.up_proj.weight.detach().clone()
        state = torch.load(tmp_path / str(fused) / "checkpoint.pt", weights_only=False)["optimizer"]
        assert bool(state["param_groups"][0]["fused"]) is fused
    assert TrainConfig().fused_optimizer
    assert abs(losses[True] - losses[False]) < 1e-5
    assert torch.allclose(weights[True], weights[False], atol=1e-6)
    assert not torch.equal(weights[True], tiny_model("llama", seed=2).model.layers[0].mlp.up_proj.weight)


def test_checkpoint_fraction_recomputes_that_share_of_layers_and_the_same_step():
    ids = torch.randint(3, 200, (4, 24), generator=torch.Generator().manual_seed(0))
    results = {}
    for frac in (None, 0.5):
        model = tiny_model("llama", seed=2, num_hidden_layers=4)
        cfg = TrainConfig(steps=2, batch_size=2, lr=1e-3, gradient_checkpointing=frac is not None,
                          checkpoint_fraction=frac or 1.0)
        flags = []
        results[frac] = train(model, CausalLM(), Batches(ids), cfg, callback=lambda step, rec, m=model: flags.append(
            [layer.gradient_checkpointing for layer in m.model.layers]))["final_loss"]
        if frac:
            assert flags[0] == [False, True, False, True]          # every other layer
        assert not any(layer.gradient_checkpointing for layer in model.model.layers)   # all off after
    assert abs(results[0.5] - results[None]) < 1e-5
    with pytest.raises(SlmkitError, match="checkpoint_fraction"):
        TrainConfig(checkpoint_fraction=0.0)


def test_gradient_checkpointing_on_a_model_without_support_is_refused():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    ids = torch.randint(3, 200, (4, 8))
    with pytest.raises(SlmkitError, match="does not support"):
        train(Plain(), CausalLM(), Batches(ids), TrainConfig(steps=1, batch_size=2, gradient_checkpointing=True))
