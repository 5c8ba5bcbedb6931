"""What a process holds: peak memory and the bytes of training state on this rank.

Ground floor (torch only). ``summary.json`` of every stage and the step metrics read these, so a
user can check a memory plan against what actually ran, per process.
"""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory_bytes(device: torch.device | str | None = None) -> int:
    """Peak memory of this process so far: ``torch.cuda.max_memory_allocated`` on a CUDA device,
    the peak resident set size (RSS) otherwise."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def tensor_bytes(t: torch.Tensor) -> int:
    loc = _local(t)
    return loc.numel() * loc.element_size()


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of parameters, gradients and optimiser state held by this rank (local shards only)."""
    params = list(model.parameters())
    out = {"parameters": sum(tensor_bytes(p) for p in params),
           "gradients": sum(tensor_bytes(p.grad) for p in params if p.grad is not None),
           "optimizer": 0}
    if optimizer is not None:
        out["optimizer"] = sum(tensor_bytes(v) for st in optimizer.state.values() for v in st.values()
                               if isinstance(v, torch.Tensor) and v.dim() > 0)
    return out
