"""FSDP2 sharding on CPU (gloo): 2 sharded processes against 1 process, sharded checkpoints, kills.

SFT, RM, DPO and PPO (separate critic, greedy sampling as in test_data_parallel.py): the same
config (batch_size 8 global) on 1 process and on 2 processes with ``fsdp: true`` ends with the same
weights (max abs difference <= 1e-5) and logs the same loss every step (<= 1e-5). The runs move
the weights by > 1e-3, and Adam moves each weight by ~the learning rate in its gradient's sign, so
a wrong gradient (a shard that is not averaged, a missing reduce-scatter, a dropped group) would
leave weights ~1e-3 apart. GRPO samples (temperature 1): each row draws from its own random
stream keyed by (seed, step, prompt, copy), so 2 processes sample what 1 does; PPO's and GRPO's
bound is 3e-5 (``ROLLOUT_TOL``: their old log-probs come from the CPU decode step, whose rounding
depends on the rows it decodes); GRPO is also compared with DDP on 2 processes.

Also: each rank of a sharded run holds <= 0.55 x the 1-process parameter + optimiser bytes
(summary.json); the log and summary.json name the engine; a DPO run SIGKILLed while writing its
step-2 checkpoint keeps step 1 and resumes from it to the uninterrupted run's weights (<= 1e-6);
a GRPO run launched as the README shows (``accelerate launch --config_file fsdp.yaml``, no
``fsdp`` field: the launcher's config is honoured on CPU, where accelerate itself would run DDP)
and killed at step 3 resumes from step 2 to the uninterrupted run's weights (<= 1e-6); asking for sharding on 1 process (``fsdp: true``, or
``accelerate launch --cpu``, which starts one) is an error; two torchrun launchers of one process each
(``--nnodes 2``, c10d rendezvous on 127.0.0.1) train SFT to the 1-process weights.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from rlhfkit.memory_plan import model_bytes
from rlhfkit.train.distributed import TrainingError
from rlhfkit.train.dpo import DPOConfig, run_dpo
from rlhfkit.train.grpo import GRPOConfig, run_grpo
from rlhfkit.train.ppo import PPOConfig, run_ppo
from rlhfkit.train.rm import RMConfig, run_rm
from rlhfkit.train.sft import SFTConfig, run_sft

HERE = Path(__file__).parent
FSDP_YAML = Path(__file__).parents[2] / "src" / "rlhfkit" / "configs" / "accelerate" / "fsdp.yaml"
ONE_PROCESS = {"sft": (SFTConfig, run_sft), "rm": (RMConfig, run_rm), "dpo": (DPOConfig, run_dpo),
               "ppo": (PPOConfig, run_ppo), "grpo": (GRPOConfig, run_grpo)}

LORA = dict(lora_r=4, lora_target_modules=["q_proj", "v_proj"])  # the reference: the policy, adapter off

pytestmark = pytest.mark.slow


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _torchrun(args: list) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _accelerate(args: list) -> subprocess.CompletedProcess:
    """As the README shows: the shipped FSDP config, 2 processes (on CPU: no GPU here)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_YAML), "--num_processes",
           "2", "--main_process_port", _port(), *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _cfg(w, stage: str, out: Path, **kw) -> dict:
    if stage in ("ppo", "grpo"):
        cfg = dict(model=w["base"], data=w["prompts"], reward_fn=["rlhfkit.world.toy:kind_reward"], max_steps=4,
                   max_new_tokens=8, micro_batch_size=2)
        cfg.update(dict(batch_size=8, num_generations=1, top_k=1, ppo_epochs=2) if stage == "ppo" else
                   dict(batch_size=4, num_generations=2, save_steps=2))
    else:
        cfg = dict(model=w["base"], data=w["sft"] if stage == "sft" else w["prefs"], max_steps=4, batch_size=8,
                   micro_batch_size=4, save_steps=1 if stage == "dpo" else 2)
    if stage == "dpo":
        cfg.update(beta=0.5, eval_data=w["prefs_eval"], eval_steps=2)
    cfg.update(output_dir=str(out), device="cpu", max_length=32, max_prompt_length=16, learning_rate=1e-3, seed=3)
    return {**cfg, **kw}


def _write(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _max_diff(a_dir: Path, b_dir: Path, name: str = "model.safetensors") -> float:
    a, b = load_file(str(a_dir / name)), load_file(str(b_dir / name))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _rcs(root: Path, name: str) -> list[str]:
    return [(root / f"{name}.rank-{r}.rc").read_text() if (root / f"{name}.rank-{r}.rc").exists() else "-"
            for r in (0, 1)]


@pytest.fixture(scope="module")
def sharded(world_dir, tmp_path_factory):
    """Launch 1 (torchrun): SFT, RM, DPO, PPO, GRPO sharded, GRPO under DDP, then a sharded DPO
    killed midway through its step-2 checkpoint. Launch 2 (accelerate launch fsdp.yaml --cpu): a
    GRPO killed at the start of step 3. Launch 3 (the same): both resumed. Then the 1-process runs."""
    root = tmp_path_factory.mktemp("fsdp")
    w = world_dir
    specs = [f"{s}={_write(root / f'{s}.yaml', _cfg(w, s, root / f'{s}-fsdp', fsdp=True))}" for s in ONE_PROCESS]
    specs.append(f"grpo={_write(root / 'grpo-ddp.yaml', _cfg(w, 'grpo', root / 'grpo-ddp'))}")
    specs.append(f"dpo={_write(root / 'dpo-lora.yaml', _cfg(w, 'dpo', root / 'dpo-lora-fsdp', fsdp=True, **LORA))}")
    killed_dpo = _cfg(w, "dpo", root / "dpo-killed", fsdp=True)
    specs.append(f"dpo={_write(root / 'dpo-killed.yaml', killed_dpo)}=ckpt:2")
    procs = {"first": _torchrun([str(HERE / "dp_driver.py"), str(root), *specs])}
    killed_grpo = _cfg(w, "grpo", root / "grpo-killed")  # no fsdp field: the accelerate config asks for it
    procs["kill"] = _accelerate([str(HERE / "dp_driver.py"), str(root),
                                 f"grpo={_write(root / 'grpo-killed.yaml', killed_grpo)}=3"])
    kept = sorted(p.name for p in (root / "dpo-killed" / "checkpoints").glob("step-*"))
    shutil.copytree(root / "grpo-killed" / "checkpoints", root / "grpo-killed-checkpoints")
    procs["resume"] = _accelerate([str(HERE / "dp_driver.py"), str(root),
                                   f"dpo={_write(root / 'dpo-resume.yaml', {**killed_dpo, 'resume': True})}",
                                   f"grpo={_write(root / 'grpo-resume.yaml', {**killed_grpo, 'resume': True})}"])
    for stage, (cls, run) in ONE_PROCESS.items():
        run(cls(**_cfg(w, stage, root / f"{stage}-1proc")))
    run_dpo(DPOConfig(**_cfg(w, "dpo", root / "dpo-lora-1proc", **LORA)))
    return root, procs, kept


# PPO's and GRPO's old log-probs are the sampler's: its CPU decode step (fused projections, matmul
# attention) rounds by the number of rows it decodes, 8 on one process and 4 on each of two, so the
# ratio starts 1 +- 1e-6 instead of exactly 1 and the weights end ~1e-5 apart (PPO 1.3e-5 on an AMD
# EPYC, 2026-12-04; GRPO 1.04e-5 on an Intel Xeon, 2026-12-05). Still 30x under the ~1e-3 a wrong
# gradient leaves.
ROLLOUT_TOL = 3e-5


@pytest.mark.parametrize("stage", list(ONE_PROCESS))
def test_two_sharded_processes_end_with_the_weights_and_losses_of_one(world_dir, sharded, stage):
    root, procs, _ = sharded
    assert _rcs(root, stage) == ["0", "0"], procs["first"].stderr[-3000:]
    one, two = root / f"{stage}-1proc", root / f"{stage}-fsdp"
    diff, moved = _max_diff(one, two), _max_diff(one, Path(world_dir["base"])) if stage != "rm" else None
    extra = _max_diff(one, two, "value_model/model.safetensors") if stage == "ppo" else 0.0
    print(f"{stage}: max abs diff 1 process vs 2 sharded {diff:.3g} (critic {extra:.3g}), moved {moved}")
    tol = ROLLOUT_TOL if stage in ("ppo", "grpo") else 1e-5
    assert diff <= tol and extra <= tol
    if moved is not None:
        assert moved > 1e-3
    rows1, rows2 = _rows(one), _rows(two)
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1]
    for r1, r2 in zip(rows1, rows2):
        for key in ("loss", "eval_loss", "value_loss", "reward"):
            if key in r1:
                assert abs(r2[key] - r1[key]) <= tol, (key, r1, r2)


@pytest.mark.parametrize("stage", list(ONE_PROCESS))
def test_each_rank_holds_about_half_the_state_and_the_engine_is_recorded(sharded, stage):
    root, procs, _ = sharded
    s2 = _summary(root / f"{stage}-fsdp")
    base = _summary(root / f"{stage}-1proc")
    assert s2["engine"]["engine"] == "FSDP2" and "full shard over 2 processes" in s2["engine"]["sharding"]
    assert s2["engine"]["requested_by"] == "fsdp: true"
    assert base["engine"]["engine"] in ("single process", "DDP") and base["engine"]["sharding"].startswith("none")
    held = lambda b: b["parameters"] + b["optimizer"]  # noqa: E731
    whole = held(base["state_bytes_per_process"][0])
    ranks = [held(b) for b in s2["state_bytes_per_process"]]
    print(f"{stage}: parameter + optimiser bytes, 1 process {whole}, per sharded rank {ranks} "
          f"({max(ranks) / whole:.3f}); peak RSS per process {s2['peak_memory_bytes_per_process']}")
    assert len(ranks) == 2 and max(ranks) <= 0.55 * whole and sum(ranks) >= whole
    if stage == "sft":  # docs/training.md's planner (ZeRO-3 = FSDP full shard, fp32: 16 bytes a parameter)
        n = base["state_bytes_per_process"][0]["parameters"] // 4
        planned = sum(model_bytes(n, n, stage=3, gpus=2, precision="fp32").values())
        measured = [sum(b.values()) for b in s2["state_bytes_per_process"]]
        print(f"sft: planned {planned:.0f} bytes per rank, measured {measured}")
        assert all(abs(m - planned) <= 0.01 * planned for m in measured)
    assert len(s2["peak_memory_bytes_per_process"]) == 2 and min(s2["peak_memory_bytes_per_process"]) > 0
    assert "engine: FSDP2; sharding: full shard over 2 processes" in procs["first"].stdout + procs["first"].stderr


def test_grpo_sharded_equals_ddp_on_two_processes(world_dir, sharded):
    root, procs, _ = sharded
    assert _rcs(root, "grpo") == ["0", "0"] and _rcs(root, "grpo-ddp") == ["0", "0"], procs["first"].stderr[-3000:]
    diff = _max_diff(root / "grpo-fsdp", root / "grpo-ddp")
    moved = _max_diff(root / "grpo-ddp", Path(world_dir["base"]))
    print(f"grpo: max abs diff FSDP2 vs DDP (2 processes) {diff:.3g}, moved {moved:.3g}")
    assert diff <= 1e-5 and moved > 1e-3
    for r1, r2 in zip(_rows(root / "grpo-ddp"), _rows(root / "grpo-fsdp"), strict=True):
        for key in ("loss", "reward", "kl"):
            assert abs(r2[key] - r1[key]) <= 1e-5, (key, r1, r2)


def test_a_kill_during_the_sharded_checkpoint_write_keeps_the_previous_one_and_resume_is_exact(sharded):
    root, procs, kept = sharded
    assert kept == ["step-0000001"], procs["first"].stderr[-3000:]  # step 2's half-written folder never counts
    assert _rcs(root, "dpo-resume") == ["0", "0"], procs["resume"].stderr[-3000:]
    assert "resumed from" in procs["resume"].stdout + procs["resume"].stderr
    diff = _max_diff(root / "dpo-killed", root / "dpo-fsdp")
    print(f"dpo killed in its checkpoint write, resumed: max abs diff to the uninterrupted run {diff:.3g}")
    assert diff <= 1e-6
    assert [r["step"] for r in _rows(root / "dpo-killed") if "loss" in r] == [1, 2, 3, 4]
    assert _summary(root / "dpo-killed")["resumed_from_step"] == 1


def test_grpo_under_accelerate_launch_fsdp_yaml_is_sharded_and_resumes_exactly(sharded):
    """The README's launch: the FSDP config on CPU shards (the engine line says so) instead of
    running DDP without a word; killed at step 3, resumed from step 2, same weights."""
    root, procs, _ = sharded
    out = procs["kill"].stdout + procs["kill"].stderr
    assert "engine: FSDP2" in out and "ACCELERATE_USE_FSDP" in out, out[-3000:]
    ckpt = root / "grpo-killed-checkpoints" / "step-0000002"
    assert sorted(p.name for p in ckpt.iterdir()) == ["dcp", "rng-rank-0.json", "rng-rank-0.pt", "rng-rank-1.json",
                                                      "rng-rank-1.pt", "scheduler.pt", "trainer_state.json"]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["processes"] == 2 and "kl_controller" in state and state["step"] == 2
    assert _rcs(root, "grpo-resume") == ["0", "0"], procs["resume"].stderr[-3000:]
    diff = _max_diff(root / "grpo-killed", root / "grpo-fsdp")
    print(f"grpo killed at step 3, resumed: max abs diff to the uninterrupted run {diff:.3g}")
    assert diff <= 1e-6
    assert _summary(root / "grpo-killed")["engine"]["requested_by"].startswith("accelerate FSDP config")


def test_the_final_sharded_folder_loads_with_from_pretrained(sharded):
    from transformers import AutoModelForCausalLM

    root, _, _ = sharded
    model = AutoModelForCausalLM.from_pretrained(root / "sft-fsdp")
    saved = load_file(str(root / "sft-fsdp" / "model.safetensors"))
    assert (model.model.embed_tokens.weight - saved["model.embed_tokens.weight"]).abs().max() == 0


def test_sharding_on_one_process_is_an_error(world_dir, tmp_path):
    with pytest.raises(TrainingError, match="fsdp: true: sharding needs 2 or more processes"):
        run_sft(SFTConfig(**_cfg(world_dir, "sft", tmp_path / "one", fsdp=True, max_steps=1)))


def test_two_nodes_train_as_one_process(world_dir, sharded, tmp_path):
    """Two "nodes" on this machine: two torchrun launchers of one process each, --nnodes 2 with a
    c10d rendezvous on 127.0.0.1 (what docs/scaling.md gives for 2 machines), sharded SFT: the same
    weights and losses as the 1-process run."""
    root, _, _ = sharded
    out = tmp_path / "two-nodes"
    cfg = _write(tmp_path / "sft.yaml", _cfg(world_dir, "sft", out, fsdp=True))
    port = _port()
    launchers = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
         str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "rlhfkit-test",
         "-m", "rlhfkit", "sft", "--config", cfg], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for node in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], "\n".join(x[-2000:] for x in logs)
    assert "full shard over 2 processes" in "".join(logs)
    diff = _max_diff(root / "sft-1proc", out)
    print(f"sft on 2 nodes x 1 process: max abs diff to 1 process {diff:.3g}")
    assert diff <= 1e-5
    for r1, r2 in zip(_rows(root / "sft-1proc"), _rows(out), strict=True):
        assert abs(r1["loss"] - r2["loss"]) <= 1e-5


def test_lora_dpo_sharded_equals_one_process(sharded):
    """LoRA under FSDP2: the frozen base is sharded with the adapter; the reference is the sharded
    policy with its adapter switched off. Same adapter weights and losses as 1 process."""
    root, procs, _ = sharded
    assert _rcs(root, "dpo-lora") == ["0", "0"], procs["first"].stderr[-3000:]
    one, two = root / "dpo-lora-1proc", root / "dpo-lora-fsdp"
    diff = _max_diff(one, two, "adapter_model.safetensors")
    moved = max(v.abs().max().item() for k, v in load_file(str(one / "adapter_model.safetensors")).items()
                if "lora_B" in k)  # B starts at zero: how far the adapter moved
    print(f"dpo LoRA: max abs diff 1 process vs 2 sharded {diff:.3g}, lora_B moved {moved:.3g}")
    assert diff <= 1e-5 and moved > 1e-3
    for r1, r2 in zip(_rows(one), _rows(two), strict=True):
        if "loss" in r1:
            assert abs(r1["loss"] - r2["loss"]) <= 1e-5


def test_a_sharded_checkpoint_is_refused_by_an_unsharded_resume(world_dir, sharded, tmp_path):
    root, _, _ = sharded
    out = tmp_path / "dpo"
    shutil.copytree(root / "dpo-killed" / "checkpoints", out / "checkpoints")
    with pytest.raises(TrainingError, match="was written with FSDP sharding and this run is without it"):
        run_dpo(DPOConfig(**_cfg(world_dir, "dpo", out, resume=True)))


def test_accelerate_launch_cpu_with_the_fsdp_config_is_refused_not_run_unsharded(world_dir, tmp_path):
    """`accelerate launch --cpu` drops the FSDP config and starts one process: the run used to train
    unsharded without a word; now it stops naming the config and what to do."""
    cfg = _write(tmp_path / "sft.yaml", _cfg(world_dir, "sft", tmp_path / "out", max_steps=1))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_YAML), "--num_processes", "2",
           "--cpu", "--main_process_port", _port(), "-m", "rlhfkit", "sft", "--config", cfg]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "sharding needs 2 or more processes" in out, out[-2000:]
    assert "accelerate launch --cpu starts one process" in out and "fsdp.yaml (distributed_type FSDP)" in out
    assert not (tmp_path / "out" / "model.safetensors").exists()
