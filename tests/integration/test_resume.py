"""Kill and resume: a run SIGKILLed mid-training and resumed ends with the same weights as a run
that was never interrupted (SFT, reward model, DPO, PPO, RLOO, GRPO). Each run is killed twice:
halfway through writing a checkpoint (the previous one must stay intact and be the one resumed
from), then at the start of a step drawn at random (seeded), then resumed to the end."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


KILL = str(Path(__file__).parents[1] / "kill_support.py")  # runs the CLI with a kill callback installed


def _cli(stage, args, kill=()):
    launch = [KILL, *kill] if kill else ["-m", "rlhfkit"]
    return subprocess.run([sys.executable, *launch, stage, *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)


ONLINE = {"ppo": ["--num_generations", "2", "--ppo_epochs", "2", "--mini_batch_size", "8"],
          # a held-out reward: the over-optimisation test's history must survive the kill
          "rloo": ["--num_generations", "2", "--heldout_reward_fn", "rlhfkit.world.toy:kind_reward", "--overopt_window", "2"],
          # adaptive KL and reward normalisation: their state must survive the kill too
          "grpo": ["--num_generations", "2", "--kl_target", "0.5", "--kl_horizon", "16", "--normalize_reward", "true"]}


def _args(world_dir, stage, out):
    data = {"sft": world_dir["sft"], "rm": world_dir["prefs"], "dpo": world_dir["prefs"]}.get(stage, world_dir["prompts"])
    batch = "4" if stage in ONLINE else "8"
    args = ["--model", world_dir["base"], "--data", data, "--output_dir", str(out), "--max_steps", "8",
            "--batch_size", batch, "--micro_batch_size", "4", "--save_steps", "2", "--save_total_limit", "2",
            "--max_length", "32", "--max_prompt_length", "16", "--learning_rate", "1e-3", "--seed", "5"]
    if stage == "dpo":
        args += ["--beta", "0.5"]
    if stage in ONLINE:
        args += ["--reward_fn", "rlhfkit.world.toy:kind_reward", "--max_new_tokens", "8", *ONLINE[stage]]
    return args


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "ppo", "rloo", "grpo"])
def test_sigkill_then_resume_matches_uninterrupted(world_dir, tmp_path, stage):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _cli(stage, _args(world_dir, stage, straight))
    assert done.returncode == 0, done.stderr[-2000:]

    ckpts = killed / "checkpoints"
    # 1. SIGKILL halfway through writing the step-4 checkpoint (weights written, trainer state not)
    crash = _cli(stage, _args(world_dir, stage, killed), ("--kill-in-checkpoint", "4"))
    assert crash.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()
    assert sorted(p.name for p in ckpts.iterdir()) == [".tmp-step-0000004", "step-0000002"]
    assert (ckpts / ".tmp-step-0000004" / "model.safetensors").exists()  # the kill really was mid-write
    assert not (ckpts / ".tmp-step-0000004" / "trainer_state.json").exists()
    assert json.loads((ckpts / "step-0000002" / "trainer_state.json").read_text())["step"] == 2

    # 2. resume (from step 2, the intact one), then SIGKILL at the start of a step drawn at random
    kill_at = random.Random(f"kill-{stage}").randint(3, 7)  # 0-based: steps 0 .. kill_at-1 are done
    crash = _cli(stage, _args(world_dir, stage, killed) + ["--resume", "true"], ("--kill-at-step", str(kill_at)))
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert f"resumed from {ckpts / 'step-0000002'} (step 2)" in crash.stdout + crash.stderr
    saved = [s for s in (2, 4, 6) if s <= kill_at][-2:]  # save_steps 2, save_total_limit 2
    assert sorted(p.name for p in ckpts.glob("step-*")) == [f"step-{s:07d}" for s in saved]

    # 3. resume to the end
    resumed = _cli(stage, _args(world_dir, stage, killed) + ["--resume", "true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {ckpts / f'step-{saved[-1]:07d}'}" in resumed.stdout + resumed.stderr

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    # and training moved the weights, so equality is not trivial
    base = load_file(world_dir["base"] + "/model.safetensors")
    shared = [k for k in base if k in a]
    assert shared
    assert max((a[k] - base[k]).abs().max().item() for k in shared) > 1e-3

    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # each step logged once, none lost or repeated
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_step"] == saved[-1] and summary["steps"] == 8
    if stage == "rloo":  # z statistics after the resume use windows that straddle the kill
        rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, killed)]
        for a_row, b_row in zip(rows[0][4:], rows[1][4:]):
            assert b_row["overopt_z_train"] == pytest.approx(a_row["overopt_z_train"], abs=1e-5)
            assert b_row["overopt_z_heldout"] == pytest.approx(a_row["overopt_z_heldout"], abs=1e-5)


class _Stop(Exception):
    """Stands in for a kill, in-process (a subprocess per run would triple this test's time)."""


@pytest.mark.parametrize("stage", ["dpo", "grpo", "ppo"])
def test_lora_stop_then_resume_matches_uninterrupted(world_dir, tmp_path, monkeypatch, stage):
    """LoRA checkpoints hold only what trains, not the frozen base: an adapter folder (which loads
    as a model, e.g. for `rlhfkit frontier`), or for PPO's policy + critic the trainable tensors.
    A run stopped at the start of step 6 and resumed from its step-4 checkpoint ends with the
    uninterrupted run's adapter."""
    from rlhfkit.train.dpo import DPOConfig
    from rlhfkit.train.grpo import GRPOConfig
    from rlhfkit.train.ppo import PPOConfig
    from rlhfkit.models import is_adapter_dir
    from rlhfkit.train import step as step_driver
    from rlhfkit.train.dpo import run_dpo
    from rlhfkit.train.grpo import run_grpo
    from rlhfkit.train.ppo import run_ppo

    def run(out, resume=False):
        common = dict(model=world_dir["base"], output_dir=str(out), max_steps=8, micro_batch_size=4, save_steps=2,
                      max_length=32, max_prompt_length=16, learning_rate=1e-3, seed=5, lora_r=8, resume=resume)
        if stage == "dpo":
            run_dpo(DPOConfig(data=world_dir["prefs"], batch_size=8, beta=0.5, **common))
        else:
            cls, fn = (GRPOConfig, run_grpo) if stage == "grpo" else (PPOConfig, run_ppo)
            fn(cls(data=world_dir["prompts"], batch_size=4, num_generations=2, max_new_tokens=8,
                   reward_fn=["rlhfkit.world.toy:kind_reward"], **common))

    class StopAtStep5(step_driver.StepCallback):
        def on_step_begin(self, step):
            if step == 5:
                raise _Stop

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(straight)
    monkeypatch.setattr(step_driver, "callbacks", [StopAtStep5()])
    with pytest.raises(_Stop):
        run(stopped)
    folder = stopped / "checkpoints" / "step-0000004"
    if stage == "ppo":  # policy adapter, critic adapter and score head
        ckpt = load_file(str(folder / "model.safetensors"))
        assert {k.split(".")[0] for k in ckpt} == {"policy", "critic"}
        assert all(".lora_" in k or ".score.modules_to_save." in k for k in ckpt)
    else:
        assert is_adapter_dir(folder) and not (folder / "model.safetensors").exists()
        ckpt = load_file(str(folder / "adapter_model.safetensors"))
        assert ckpt and all(".lora_A." in k or ".lora_B." in k for k in ckpt)  # no frozen base weights
    monkeypatch.undo()
    run(stopped, resume=True)

    a = load_file(str(straight / "adapter_model.safetensors"))
    b = load_file(str(stopped / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    assert max(a[k].abs().max().item() for k in a if "lora_B" in k) > 1e-3  # trained: B left zero
    steps = [json.loads(x)["step"] for x in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert json.loads((stopped / "summary.json").read_text())["resumed_from_step"] == 4
