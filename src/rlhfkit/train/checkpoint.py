"""Exact checkpoint/resume and the final write.

A checkpoint holds the model (or only what trains, for LoRA), the optimiser, the scheduler, every
RNG state and the step, written to a temporary folder and renamed into place (fsynced), so a kill
mid-write leaves the previous checkpoint intact. Only the main process writes (under FSDP2 every
process writes its shards: ``dcp.py``); a write error there
stops every process with its message (:func:`on_main`: no one is left waiting at a barrier).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from safetensors.torch import save_model as save_module
from transformers import PreTrainedModel

from ..models import ADAPTER_WEIGHTS, is_peft, save_model
from .distributed import TrainingError, is_sharded
from .fsdp import engine_figures

CHECKPOINTS = "checkpoints"
TRAINABLE_ONLY = "trainable-only"  # checkpoint metadata: frozen (LoRA base) weights are not in the file


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint; half-written ones (``.tmp-*``) are never picked."""
    root = Path(output_dir) / CHECKPOINTS
    done = sorted(root.glob("step-*")) if root.exists() else []
    return done[-1] if done else None


def on_main(run, write: Callable[[], Any]) -> None:
    """Run ``write`` on the main process only, then tell every process whether it failed.

    This replaces a bare barrier: with one, a full disk on the main process would raise there while
    the others waited at the barrier until the collective timeout (30 minutes by default). The
    broadcast is itself the synchronisation point, so the others stop at once with the message.
    """
    error, failure = None, None
    if run.is_main:
        try:
            write()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others have heard of it
            error, failure = f"{type(e).__name__}: {e}" if not isinstance(e, TrainingError) else str(e), e
    if run.accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if failure is not None:
        raise failure
    if error is not None:
        raise TrainingError(f"process {run.accelerator.process_index}: stopping because the main process failed "
                            f"to write: {error}")


def save_checkpoint(run, model, optimizer, scheduler, step: int, state: dict,
                    midway: Callable[[], None] = lambda: None) -> Path | None:
    """Write model, optimiser, scheduler, RNG states and the step to a temporary folder, then
    rename it into place: a kill mid-write leaves the previous checkpoint untouched. The main
    process writes (processes hold identical weights and optimiser states under DDP); the others
    learn whether it succeeded. The RNG states are the main process's and every process restores
    them: all processes are seeded alike, data order comes from seeded generators, and online
    sampling seeds by (seed, step, rank), so nothing a resume must reproduce differs by rank.
    ``midway`` runs when the weights and optimiser are written and the trainer state is not."""
    root = run.output_dir / CHECKPOINTS
    final, tmp = root / f"step-{step:07d}", root / f".tmp-step-{step:07d}"

    def write() -> None:
        previous = latest_checkpoint(run.output_dir)
        try:
            _write_tensors(model, optimizer, scheduler, tmp)
            midway()
            write_atomic(tmp, final, "trainer_state.json", json.dumps(_trainer_state(step, state)))
        except OSError as e:  # a full disk, a read-only folder: say so, keep the previous checkpoint
            shutil.rmtree(tmp, ignore_errors=True)
            kept = f"the last good checkpoint is {previous}" if previous else "no checkpoint was written yet"
            raise TrainingError(f"could not write checkpoint {final} at step {step}: {e}; {kept}") from e
        for old in sorted(root.glob("step-*"))[:-max(run.cfg.save_total_limit, 1)]:
            shutil.rmtree(old, ignore_errors=True)

    on_main(run, write)
    return final if run.is_main else None


def _write_tensors(model, optimizer, scheduler, tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if is_peft(model):  # a LoRA model: an adapter folder, which loads as a model (base + adapter)
        save_model(model, None, tmp)
    elif frozen:  # e.g. PPO's LoRA policy + critic: only what trains (adapters, heads); the base never changes
        tmp.mkdir(parents=True)
        trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(tmp / "model.safetensors"), metadata={"rlhfkit": TRAINABLE_ONLY})
    elif isinstance(model, PreTrainedModel):
        save_model(model, None, tmp)
    else:  # e.g. PPO's policy + critic: one state dict (shared tensors stored once)
        tmp.mkdir(parents=True)
        save_module(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")


def _trainer_state(step: int, state: dict) -> dict:
    py_state = random.getstate()
    np_state = np.random.get_state()
    return {"step": step, **state, "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def write_atomic(tmp: Path, final: Path, last_name: str, last_text: str) -> None:
    """Write ``last_name`` into the folder ``tmp``, fsync it, and rename it to ``final``."""
    (tmp / last_name).write_text(last_text)
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    """fsync every file in ``path`` and the folder itself (or the one file ``path``)."""
    for f in [*path.iterdir(), path] if path.is_dir() else [path]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(run, model, optimizer, scheduler, state: dict) -> int:
    """Restore everything ``save_checkpoint`` wrote; returns the step to continue from (0 if none)."""
    ckpt = latest_checkpoint(run.output_dir)
    if ckpt is None:
        run.print(f"resume: no checkpoint in {run.output_dir / CHECKPOINTS}; starting from step 0")
        return 0
    if (ckpt / ADAPTER_WEIGHTS).exists():
        _load_adapter(model, ckpt / ADAPTER_WEIGHTS)
    else:
        _load_weights(model, ckpt / "model.safetensors")
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    meta = json.loads((ckpt / "trainer_state.json").read_text())
    random.setstate((meta["python_rng"][0], tuple(meta["python_rng"][1]), meta["python_rng"][2]))
    np_state = meta["numpy_rng"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    # the rest of the saved state: counters, and recipe state such as a KL controller's
    state.update({k: v for k, v in meta.items() if k not in ("step", "python_rng", "numpy_rng")})
    run.print(f"resumed from {ckpt} (step {meta['step']})")
    return int(meta["step"])


def _load_adapter(model, path: Path) -> None:
    """A LoRA checkpoint's adapter into ``model`` (a peft model); every trainable tensor must be in it."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, load_file(str(path), device=str(next(model.parameters()).device)))
    params = dict(model.named_parameters())
    untrained = [k for k in result.missing_keys if k in params and params[k].requires_grad]
    if result.unexpected_keys or untrained:
        raise TrainingError(f"{path}: checkpoint does not match the model "
                            f"(missing {untrained[:3]}, unexpected {result.unexpected_keys[:3]})")


def _load_weights(model, path: Path) -> None:
    """Load a safetensors state dict; keys the file lacks must be tied to keys it has (or, in a
    trainable-only LoRA checkpoint, be frozen base weights, which the run loaded from the base)."""
    tensors = load_file(str(path), device=str(next(model.parameters()).device))
    with safe_open(str(path), "pt") as f:
        trainable_only = (f.metadata() or {}).get("rlhfkit") == TRAINABLE_ONLY
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in tensors if k in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]
    if trainable_only:
        untied = [k for k in untied if k in params and params[k].requires_grad]
    if unexpected or untied:
        raise TrainingError(f"{path}: checkpoint does not match the model "
                            f"(missing {untied[:3]}, unexpected {unexpected[:3]})")


# --------------------------------------------------------------------------- the final write


def full_state_dict(run, model) -> dict | None:
    """Under FSDP2, the full (unsharded) state dict of ``model`` (the trained module or a part of it,
    e.g. the policy inside PPO's policy + critic), gathered by every process (a collective) and kept,
    on CPU, by the main one; None where the module itself holds full weights."""
    if run.prepared is None or not is_sharded(run):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    prefix = next(name for name, m in run.prepared.named_modules() if m is model) + "."
    full = get_model_state_dict(run.prepared, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # a tied weight (LM head = embeddings) once, under its first name, as save_pretrained writes it
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k[len(prefix):]: v for k, v in full.items()
            if k.startswith(prefix) and k[len(prefix):] not in tied} if run.is_main else None


def write_final_model(run, model, tokenizer, state_dict: dict | None) -> None:
    """The final Hugging Face folder (main process); ``state_dict`` is FSDP2's gathered weights, or None."""
    if state_dict is None:
        save_model(run.accelerator.unwrap_model(model), tokenizer, run.output_dir)
    else:  # FSDP: the module holds shards; write the gathered full weights under its config
        model.save_pretrained(run.output_dir, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(run.output_dir)


def finish(run, model, tokenizer, summary: dict) -> dict:
    """Write the final Hugging Face folder and summary.json (main process only), with the engine,
    sharding and per-process memory figures (``fsdp.engine_figures``)."""
    state_dict = full_state_dict(run, model)
    summary.update(engine_figures(run))

    def write() -> None:
        try:
            write_final_model(run, model, tokenizer, state_dict)
            (run.output_dir / "summary.json").write_text(json.dumps({**summary, **run.notes}, indent=2))
        except OSError as e:  # a full disk at the very end: say what is still safe
            good = latest_checkpoint(run.output_dir)
            kept = f"the last good checkpoint is {good}" if good else "no checkpoint was written"
            raise TrainingError(f"could not write the final model to {run.output_dir}: {e}; {kept}") from e

    on_main(run, write)
    summary.update(run.notes)
    return summary
