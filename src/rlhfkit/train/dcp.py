"""Exact checkpoints of a sharded (FSDP2) run, with ``torch.distributed.checkpoint`` (DCP).

Every process writes its shards of the model and optimiser (``dcp/``) and its own RNG states
(``rng-rank-R.pt`` torch and CUDA, ``.json`` Python and NumPy: under sharding the processes' RNG streams are
theirs to resume) into the temporary folder; when all have written, the main process adds the
scheduler and the trainer state (step, data position, KL controller, reward moments, ...) and renames
the folder into place, as :func:`checkpoint.save_checkpoint` does. A kill at any point before the
rename leaves the previous checkpoint as it was. A checkpoint written by N processes resumes on N
(the trainer state records N; another count is refused: the data shares and RNG streams are per
process).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import CHECKPOINTS, latest_checkpoint, on_main, write_atomic
from .distributed import TrainingError

SHARDS = "dcp"


def _save_rng(path: Path) -> None:
    """This process's RNG states: torch's (and CUDA's) as tensors, Python's and NumPy's as JSON."""
    torch.save({"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, path.with_suffix(".pt"))
    py, npy = random.getstate(), np.random.get_state()
    path.with_suffix(".json").write_text(json.dumps({"python": [py[0], list(py[1]), py[2]],
                                                     "numpy": [npy[0], npy[1].tolist(), *npy[2:]]}))


def _load_rng(path: Path) -> None:
    rng = torch.load(path.with_suffix(".pt"), weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    meta = json.loads(path.with_suffix(".json").read_text())
    random.setstate((meta["python"][0], tuple(meta["python"][1]), meta["python"][2]))
    npy = meta["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))


def _all_ok(run, error: str | None) -> None:
    """Raise on every process if any process failed (each names its error)."""
    from accelerate.utils import gather_object

    errors = [e for e in gather_object([error]) if e]
    if errors:
        raise TrainingError(errors[0])


def save_sharded(run, model, optimizer, scheduler, step: int, state: dict,
                 midway: Callable[[], None] = lambda: None) -> Path | None:
    """Every process writes its shards and RNG states; the main process commits (see module docstring)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = run.output_dir / CHECKPOINTS
    final, tmp = root / f"step-{step:07d}", root / f".tmp-step-{step:07d}"
    previous = latest_checkpoint(run.output_dir)
    kept = f"the last good checkpoint is {previous}" if previous else "no checkpoint was written yet"

    def fail(e: Exception) -> str:
        return f"could not write checkpoint {final} at step {step}: {e}; {kept}"

    def make_tmp() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise TrainingError(fail(e)) from e

    on_main(run, make_tmp)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / SHARDS))  # collective
    error = None
    try:
        _save_rng(tmp / f"rng-rank-{run.accelerator.process_index}")
    except OSError as e:
        error = fail(e)
    _all_ok(run, error)

    def commit() -> None:
        try:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            midway()
            meta = {"step": step, "processes": run.accelerator.num_processes, "sharded": SHARDS, **state}
            write_atomic(tmp, final, "trainer_state.json", json.dumps(meta))
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TrainingError(fail(e)) from e
        for old in sorted(root.glob("step-*"))[:-max(run.cfg.save_total_limit, 1)]:
            shutil.rmtree(old, ignore_errors=True)

    on_main(run, commit)
    return final if run.is_main else None


def is_sharded_checkpoint(ckpt: Path) -> bool:
    return (ckpt / SHARDS).is_dir()


def load_sharded(run, model, optimizer, scheduler, state: dict, ckpt: Path) -> int:
    """Restore what :func:`save_sharded` wrote into the sharded ``model`` and its optimiser."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = json.loads((ckpt / "trainer_state.json").read_text())
    world = run.accelerator.num_processes
    if meta.get("processes") != world:
        raise TrainingError(f"resume: {ckpt} was written by {meta.get('processes')} processes and this run has "
                            f"{world}; a sharded checkpoint resumes on as many processes as wrote it")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    both = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(both, checkpoint_id=str(ckpt / SHARDS))  # into this process's shards, in place
    set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"])
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    _load_rng(ckpt / f"rng-rank-{run.accelerator.process_index}")
    state.update({k: v for k, v in meta.items() if k not in ("step", "processes", "sharded")})
    run.print(f"resumed from {ckpt} (step {meta['step']}, {world} processes, sharded)")
    return int(meta["step"])
