"""Data parallel on CPU (gloo): 2 processes under ``torchrun`` / ``accelerate launch`` against 1.

SFT, RM and DPO: the same config (batch_size 8 global, micro_batch_size 4 per process) ends with
the same weights on 1 process (two micro-batches accumulated) and on 2 (one micro-batch each,
gradients all-reduced by DDP); max abs difference <= 1e-4. Why this tolerance can be missed: the
runs move the weights by more than 1e-3 from the base model (checked), and Adam's first steps
move each weight by about the learning rate (1e-3) in the direction of its gradient's sign. If
the shards overlapped (both ranks reading the same 4 examples) or DDP did not sync (each rank
stepping on its own 4), the step's gradient would be that of other data, the signs of many
coordinates would differ, and those weights would end ~1e-3 apart. Verified by breaking the
code on purpose: with ``distributed.my_share`` handing both ranks the first share, SFT ends 5.0e-3 away;
with the loss computed on the bare module instead of through the DDP wrapper (no gradient sync),
SFT, RM and DPO end 5.0e-3 away; this test fails on each. In practice the sums are exact:
(2 g1 + 2 g2) / 2 in float is g1 + g2, so the difference is 0.

PPO with greedy sampling (top_k 1: the same completions on 1 and 2 processes) ends with the same
policy and critic within 2e-5 (see its test for the figures). Also: per-step logged losses and
eval figures agree (metrics are reduced across processes, the
held-out set is evaluated whole), only the main process writes (one line per step), a checkpoint
write failure on the main process stops both processes with its message instead of leaving one at
a barrier, a run killed at a step resumes on 2 processes to the uninterrupted run's weights, and
PPO on 2 processes under ``accelerate launch`` with the shipped DDP config raises its reward.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.ppo import PPOConfig
from rlhfkit.train.rm import RMConfig
from rlhfkit.train.sft import SFTConfig
from rlhfkit.train.dpo import run_dpo
from rlhfkit.train.distributed import TrainingError, batch_plan
from rlhfkit.train.ppo import run_ppo
from rlhfkit.train.rm import run_rm
from rlhfkit.train.sft import run_sft

HERE = Path(__file__).parent
ACCELERATE_CONFIGS = Path(__file__).parents[2] / "src" / "rlhfkit" / "configs" / "accelerate"
OFFLINE = {"sft": (SFTConfig, run_sft), "rm": (RMConfig, run_rm), "dpo": (DPOConfig, run_dpo)}


def _env() -> dict:
    # two processes on a two-core machine: one thread each, or they fight over the cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _torchrun(args: list, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _offline_cfg(world_dir, stage: str, out: Path, **kw) -> dict:
    data = world_dir["sft"] if stage == "sft" else world_dir["prefs"]
    cfg = dict(model=world_dir["base"], data=data, output_dir=str(out), max_steps=4, batch_size=8, micro_batch_size=4,
               max_length=32, max_prompt_length=16, learning_rate=1e-3, seed=3, save_steps=2, device="cpu")
    if stage in ("rm", "dpo"):  # evaluated under DDP too (every process evaluates the whole set)
        cfg.update(eval_data=world_dir["prefs_eval"], eval_steps=2)
    if stage == "dpo":
        cfg["beta"] = 0.5
    return {**cfg, **kw}


def _greedy_ppo_cfg(world_dir, out: Path) -> dict:
    """PPO whose sampling does not depend on the process count: top_k 1 draws the argmax whatever
    the generator, so 1 and 2 processes score the same completions and must end alike."""
    return dict(model=world_dir["base"], data=world_dir["prompts"], output_dir=str(out), device="cpu",
                reward_fn=["rlhfkit.world.toy:kind_reward"], max_steps=4, batch_size=8, num_generations=1, top_k=1,
                ppo_epochs=2, micro_batch_size=2, max_new_tokens=8, max_length=32, max_prompt_length=16,
                learning_rate=1e-3, seed=3)


def _write(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _max_diff(a_dir: Path, b_dir: Path) -> float:
    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def launched(world_dir, tmp_path_factory):
    """One torchrun launch of 2 processes: SFT, RM, DPO; an SFT whose checkpoint folder cannot be
    written; an SFT killed at the start of step 4 (after its step-2 checkpoint). Then the same
    SFT, RM and DPO configs on 1 process, in this process."""
    root = tmp_path_factory.mktemp("dp")
    specs = []
    for stage in OFFLINE:
        specs.append(f"{stage}={_write(root / f'{stage}.yaml', _offline_cfg(world_dir, stage, root / f'{stage}-2proc'))}")
    blocked = root / "blocked"
    (blocked / "checkpoints").parent.mkdir()
    (blocked / "checkpoints").write_text("a file where the checkpoint folder goes: every write fails")
    specs.append(f"sft={_write(root / 'blocked.yaml', _offline_cfg(world_dir, 'sft', blocked))}")
    specs.append(f"ppo={_write(root / 'ppo.yaml', _greedy_ppo_cfg(world_dir, root / 'ppo-2proc'))}")
    specs.append(f"sft={_write(root / 'killed.yaml', _offline_cfg(world_dir, 'sft', root / 'killed'))}=3")
    proc = _torchrun([str(HERE / "dp_driver.py"), str(root), *specs])
    for stage, (cls, run) in OFFLINE.items():
        run(cls(**_offline_cfg(world_dir, stage, root / f"{stage}-1proc")))
    run_ppo(PPOConfig(**_greedy_ppo_cfg(world_dir, root / "ppo-1proc")))
    return root, proc


@pytest.mark.parametrize("stage", list(OFFLINE))
def test_two_processes_end_with_the_weights_of_one(world_dir, launched, stage):
    root, proc = launched
    assert [(root / f"{stage}.rank-{r}.rc").read_text() for r in (0, 1)] == ["0", "0"], proc.stderr[-3000:]
    one, two = root / f"{stage}-1proc", root / f"{stage}-2proc"
    diff = _max_diff(one, two)
    moved = _max_diff(one, Path(world_dir["base"])) if stage != "rm" else None
    print(f"{stage}: max abs diff 1 vs 2 processes {diff:.3g}" + (f", moved {moved:.3g}" if moved else ""))
    assert diff <= 1e-4
    if moved is not None:  # RM's score head has no counterpart in the base model; its backbone moved alike
        assert moved > 1e-3
    rows1, rows2 = _rows(one), _rows(two)
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1]  # the main process alone logged
    for r1, r2 in zip(rows1, rows2):
        for key in ("loss", "eval_loss", "eval_accuracy", "eval_reward_accuracy", "accuracy", "margin", "kl"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], abs=1e-5), (key, r1, r2)
    # every process's tokens counted: the 2-process rate is of the same 8 examples a step
    assert all(r["tokens_per_second"] > 0 for r in rows2 if "loss" in r)
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["steps"] == s1["steps"] == 4


def test_ppo_two_processes_compute_the_gradient_of_one(world_dir, launched):
    """Same completions on 1 and 2 processes (greedy), so the same weights if the engine's maths is
    process-count free: each process's micro-batch loss is its share of the mini-batch's *global*
    token count, advantages are whitened with global statistics, DDP averages. Measured: 1.5e-6
    (policy), 1.4e-7 (critic) after 8 updates that move weights by 4.5e-3. Breaking it on purpose:
    per-process whitening ends 7.2e-3 away, a per-process token count 6.1e-5 away; both fail."""
    root, proc = launched
    assert [(root / f"ppo.rank-{r}.rc").read_text() for r in (0, 1)] == ["0", "0"], proc.stderr[-3000:]
    one, two = root / "ppo-1proc", root / "ppo-2proc"
    policy, critic = _max_diff(one, two), _max_diff(one / "value_model", two / "value_model")
    print(f"ppo greedy: max abs diff 1 vs 2 processes: policy {policy:.3g}, critic {critic:.3g}")
    assert policy <= 2e-5 and critic <= 2e-5
    assert _max_diff(one, Path(world_dir["base"])) > 1e-3
    rows1, rows2 = _rows(one), _rows(two)
    for r1, r2 in zip(rows1, rows2, strict=True):
        for key in ("reward", "kl", "response_length", "loss", "value_loss"):
            assert r2[key] == pytest.approx(r1[key], abs=1e-4), (key, r1, r2)


def test_a_failed_checkpoint_write_stops_every_process(launched):
    """The main process cannot write checkpoints/ (a file is there): both processes exit with the
    error (code 2) instead of the other one waiting at a barrier for the collective timeout."""
    root, proc = launched
    assert [(root / f"blocked.rank-{r}.rc").read_text() for r in (0, 1)] == ["2", "2"], proc.stderr[-3000:]
    assert "could not write checkpoint" in proc.stderr
    assert "stopping because the main process failed to write" in proc.stderr


def test_resume_on_two_processes_matches_the_uninterrupted_run(launched):
    root, _ = launched
    killed = root / "killed"
    assert sorted(p.name for p in (killed / "checkpoints").glob("step-*")) == ["step-0000002"]
    assert not (killed / "model.safetensors").exists()
    resumed = _torchrun(["-m", "rlhfkit", "sft", "--config", str(root / "killed.yaml"), "--resume", "true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed / 'checkpoints' / 'step-0000002'} (step 2)" in resumed.stdout + resumed.stderr
    assert _max_diff(killed, root / "sft-2proc") <= 1e-6
    assert [r["step"] for r in _rows(killed)] == [1, 2, 3, 4]  # no step lost or logged twice
    assert json.loads((killed / "summary.json").read_text())["resumed_from_step"] == 2


def test_ppo_on_two_processes_under_accelerate_launch_raises_the_reward(world_dir, tmp_path):
    """The shipped DDP config (on a machine without GPUs its processes run on CPU with gloo); the
    toy reward (kind words minus unkind ones) starts near 0 for the random base model."""
    out = tmp_path / "ppo"
    cfg = _write(tmp_path / "ppo.yaml", dict(
        model=world_dir["base"], data=world_dir["prompts"], output_dir=str(out), device="cpu",
        reward_fn=["rlhfkit.world.toy:kind_reward"], max_steps=12, batch_size=8, num_generations=2, ppo_epochs=2,
        mini_batch_size=8, max_new_tokens=8, max_length=32, max_prompt_length=16, learning_rate=1e-3, seed=0))
    with socket.socket() as s:  # a free port: the config's default (29500) may be taken on a shared machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / "ddp.yaml"),
           "--num_processes", "2", "--main_process_port", str(port), "-m", "rlhfkit", "ppo", "--config", cfg]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    start = sum(r["reward"] for r in rows[:3]) / 3
    end = sum(r["reward"] for r in rows[-3:]) / 3
    print(f"ppo 2 processes: reward {start:.2f} -> {end:.2f}")
    assert start < 1.0 and end >= start + 1.0, (start, end)
    assert rows[-1]["kl"] > 0 and "value_loss" in rows[-1]
    assert (out / "model.safetensors").exists() and (out / "value_model" / "model.safetensors").exists()


class _Cfg:
    data, batch_size, micro_batch_size, max_steps, epochs = "train.jsonl", 8, 0, 4, 1.0


def test_batch_size_must_divide_by_the_processes():
    with pytest.raises(TrainingError, match="batch_size 8 is not divisible by the 3 processes"):
        batch_plan(100, _Cfg, 3)
    assert batch_plan(100, _Cfg, 2) == (12, 4, 4)  # micro-batch = this process's share of 8
