"""Sharding with FSDP2 (``torch.distributed.fsdp.fully_shard``) and the one ``prepare`` every trainer
calls: FSDP2 when asked for, DDP otherwise, and a line in the log and summary.json saying which ran.

How sharding is asked for: ``fsdp: true`` in the stage's config, or an accelerate config whose
``distributed_type`` is FSDP (``accelerate launch --config_file fsdp.yaml``). On GPUs accelerate's
FSDP2 plugin (``fsdp_version: 2``) shards in ``accelerator.prepare``. Without a GPU accelerate
ignores its FSDP config (``ACCELERATE_USE_FSDP`` is set, the processes run DDP), and ``--cpu``
drops it before the one process it starts; so there, and whenever ``fsdp: true`` is set outside an
accelerate FSDP launch, this module applies ``fully_shard`` itself:
one group per transformer block (the classes a model names in ``_no_split_modules``) and one for the
rest (embeddings, final norm, LM head, PPO's value head) at the root ``ForwardFn``. FSDP2's
reduce-scatter averages gradients over processes as DDP's all-reduce does, so the step driver's
loss scaling is the same under both. Asking for sharding and not getting it (one process, an FSDP1
config, DeepSpeed) is an error, never a silent fallback.

What is sharded: the trained module only (policy; PPO's policy + critic; the reward model in
``rm``). Frozen models (DPO/PPO/RLOO/GRPO reference, PPO's reward model) are replicated on every
process: they hold no gradients or optimiser state (the 12 of AdamW's 16 bytes per parameter that
sharding saves), and replicating them costs no collective per forward; with LoRA and no
``ref_model`` the reference is the sharded policy with its adapter switched off.

Generation (:func:`gathered`): sampling unshards every group once per rollout batch and reshards
after it, so a decode step issues no collective (one all-gather per group per batch instead of one
per group per token; processes may stop decoding at different steps without waiting for each
other). The cost is one full copy of the trained module's parameters on every process while it
samples (PPO: policy + critic), the same as DDP holds all the time.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from .distributed import ForwardFn, TrainingError, sharded_modules


def fsdp_request(run) -> str:
    """Why this run must shard ("" when it need not): the config field or the accelerate config."""
    if getattr(run.cfg, "fsdp", False):
        return "fsdp: true"
    if run.accelerator.distributed_type == DistributedType.FSDP:
        return "accelerate FSDP config"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1"):  # set by accelerate launch; ignored on CPU
        return "accelerate FSDP config (ACCELERATE_USE_FSDP)"
    launcher = _launcher_config()
    return f"accelerate config {launcher} (distributed_type FSDP)" if launcher else ""


def _launcher_config() -> str:
    """The FSDP accelerate config this process was launched with under ``--cpu``, which accelerate
    drops before the process starts ("" if none; read from the launcher's command line on Linux)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1"):
        return ""
    try:
        args = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    if "--config_file" not in args or args.index("--config_file") + 1 >= len(args):
        return ""
    path = args[args.index("--config_file") + 1]
    try:
        import yaml

        spec = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, ValueError):
        return ""
    return path if str(spec.get("distributed_type", "")).upper() == "FSDP" else ""


def shard(root: ForwardFn, optimizer) -> ForwardFn:
    """``fully_shard`` each transformer block, then the root; the optimiser's parameters are swapped
    for the sharded ones (same names, same order; its state is still empty)."""
    from torch.distributed.fsdp import fully_shard

    before = {id(p): n for n, p in root.named_parameters()}
    blocks = set(root._no_split_modules or [])  # the transformer blocks of every model inside
    n_blocks = 0
    for m in list(root.modules()):
        if type(m).__name__ in blocks:
            fully_shard(m)
            n_blocks += 1
    if not n_blocks:
        raise TrainingError(f"fsdp: found no transformer blocks to shard in {type(root.module).__name__} "
                            "(its models name none in _no_split_modules)")
    fully_shard(root)
    after = dict(root.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [after[before[id(p)]] for p in group["params"]]
    return root


def prepare(run, module: torch.nn.Module, optimizer):
    """(prepared ForwardFn around ``module``, optimiser): FSDP2 when asked for, DDP otherwise
    (``accelerator.prepare``; the identity on one process). Records ``run.engine``."""
    acc = run.accelerator
    why = fsdp_request(run)
    world = acc.num_processes
    if acc.distributed_type == DistributedType.DEEPSPEED:
        raise TrainingError("DeepSpeed is not supported: FSDP2 is rlhfkit's sharding engine "
                            "(accelerate config fsdp.yaml, or fsdp: true under torchrun; docs/scaling.md)")
    if why and world < 2:
        hint = (" (accelerate launch --cpu starts one process: leave --cpu out; without a GPU the processes "
                "run on CPU with gloo)" if why.startswith("accelerate config") else "")
        raise TrainingError(f"{why}: sharding needs 2 or more processes and this run has 1{hint}; launch with "
                            "torchrun --nproc_per_node N or accelerate launch --num_processes N (docs/scaling.md)")
    if acc.distributed_type == DistributedType.FSDP:
        version = int(getattr(acc.state.fsdp_plugin, "fsdp_version", 1) or 1)
        if version != 2:
            raise TrainingError(f"accelerate FSDP config: fsdp_version {version}; rlhfkit shards with FSDP2: set "
                                "fsdp_version: 2 (the shipped fsdp.yaml does)")
        model, optimizer = acc.prepare(ForwardFn(module), optimizer)
        how = "accelerate FSDP2 plugin"
    elif why:
        model, how = shard(ForwardFn(module).to(acc.device), optimizer), "torch fully_shard"
    else:
        model, optimizer = acc.prepare(ForwardFn(module), optimizer)
        how = ""
    groups = len(sharded_modules(model))
    if why and not groups:  # asked for and not there: never train on as if it were
        raise TrainingError(f"{why}: the model was not sharded ({acc.distributed_type.value}); stopping")
    backend = torch.distributed.get_backend() if world > 1 else "none"
    run.engine = ({"engine": "FSDP2", "sharding": f"full shard over {world} processes ({how}, {groups} groups: "
                   "parameters, gradients, optimiser state)", "requested_by": why, "backend": backend}
                  if groups else {"engine": "DDP" if world > 1 else "single process",
                                  "sharding": "none (every process holds the full model)", "backend": backend})
    asked = f"; asked for by {why}" if why else ""
    run.print(f"engine: {run.engine['engine']}; sharding: {run.engine['sharding']}{asked}")
    return model, optimizer


@contextmanager
def gathered(model: torch.nn.Module):
    """The sharded groups of ``model`` unsharded for the block (e.g. one rollout batch), then resharded:
    no collective runs inside it (see the module docstring). The identity for an unsharded model."""
    groups = sharded_modules(model)
    if groups and groups[0] is model:
        with torch.no_grad():  # FSDP2 sets its groups up in the root's first forward: run an empty one
            model(lambda module: None)
    for g in groups:
        g.set_reshard_after_forward(False, recurse=False)
        g.unshard()
    try:
        yield
    finally:
        for g in groups:
            g.reshard()
            # FSDP2's defaults: blocks reshard after their forward; the root keeps its parameters
            # (its backward needs them at once)
            g.set_reshard_after_forward(g is not model, recurse=False)


def engine_figures(run) -> dict:
    """summary.json's record of what ran, gathered from every process (a collective): the engine and
    sharding, each process's peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU) and
    the bytes of parameters + gradients + optimiser state each rank held after its first step."""
    from accelerate.utils import gather_object

    from ..resources import peak_memory_bytes

    mine = {"peak_memory_bytes": peak_memory_bytes(run.device), "state_bytes": run.state_bytes or {}}
    every = gather_object([mine]) if run.accelerator.num_processes > 1 else [mine]
    return {"engine": run.engine or {"engine": "none (no training step ran)"},
            "peak_memory_bytes_per_process": [m["peak_memory_bytes"] for m in every],
            "state_bytes_per_process": [m["state_bytes"] for m in every]}
