"""Kill and resume: a run SIGKILLed mid-training and resumed ends with the same weights as a run
that was never interrupted (SFT, reward model, DPO, PPO, RLOO, GRPO)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _cli(stage, args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "rlhfkit", stage, *args], env=env,
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

    # SIGKILL at the start of step 5 (0-based): checkpoints of steps 2 and 4 exist, step 5 was not saved
    crash = _cli(stage, _args(world_dir, stage, killed), {"RLHFKIT_TEST_KILL_AT_STEP": "5"})
    assert crash.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]

    resumed = _cli(stage, _args(world_dir, stage, killed) + ["--resume", "true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

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
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8
    if stage == "rloo":  # z statistics after the resume use windows that straddle the kill
        rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, killed)]
        for a_row, b_row in zip(rows[0][4:], rows[1][4:]):
            assert b_row["overopt_z_train"] == pytest.approx(a_row["overopt_z_train"], abs=1e-5)
            assert b_row["overopt_z_heldout"] == pytest.approx(a_row["overopt_z_heldout"], abs=1e-5)
