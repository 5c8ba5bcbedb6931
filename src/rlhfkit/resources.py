"""What a process holds and may use: peak memory, the bytes of training state on this rank, and
how many CPU threads to run.

Ground floor (torch only). ``summary.json`` of every stage and the step metrics read these, so a
user can check a memory plan against what actually ran, per process.

Threads: PyTorch's OpenMP threads meet at a barrier after every parallel op, so when another
process holds one of the cores, every op waits for the thread that was descheduled (a 2-core
``make demo`` ran 8x slower beside two busy processes with 2 threads). ``set_cpu_threads`` runs
one thread per core that is actually free, measured from ``/proc/stat`` over a short sample,
never more than the cores this process may use (affinity, cgroup quota); ``OMP_NUM_THREADS``
set by the user always wins, and so does a multi-process launcher (``LOCAL_WORLD_SIZE`` > 1).

Freed memory (``keep_freed_memory``): glibc's malloc hands freed blocks of a few MB back to the
kernel (``munmap`` above the mmap threshold, heap trimming above the trim threshold), so each
training step's activations are fresh pages that fault in one by one (9.7k faults, ~20 ms of a
340 ms GRPO training pass on the benchmark model). The online trainers raise both thresholds on
the CPU: freed blocks stay in the heap and are reused; the peak RSS is the same.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import resource
import sys
import time

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


def choose_threads(allowed: int, busy: float | None, quota: float | None = None) -> int:
    """Threads for this process: the cores it may use (``allowed``, capped by a cgroup CPU
    ``quota`` in cores) less those other processes keep ``busy`` (in cores; None when unknown).
    A core counts as free when it is at least 75% idle (``floor(free + 0.25)``); never below 1."""
    limit = allowed if quota is None else max(1, min(allowed, int(quota)))
    if busy is None:
        return max(1, limit)
    return max(1, min(limit, int(allowed - busy + 0.25)))


def allowed_cpus() -> list[int]:
    """CPU ids this process may run on (its affinity mask), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cgroup_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """The cgroup v2 CPU quota in cores (``cpu.max`` "quota period"), None when unlimited or unknown."""
    try:
        quota, period = open(path).read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _idle_and_total(cpus: list[int]) -> tuple[int, int] | None:
    """Summed (idle + iowait, total) jiffies of these CPUs from /proc/stat, None where unreadable."""
    idle = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *vals = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    nums = [int(v) for v in vals[:8]]
                    idle += nums[3] + nums[4]
                    total += sum(nums)
    except (OSError, ValueError, IndexError):
        return None
    return (idle, total) if total else None


def busy_cores(cpus: list[int], sample_s: float = 0.3) -> float | None:
    """Cores of ``cpus`` kept busy by other processes over a ``sample_s`` sample (this process
    sleeps meanwhile); the 1-minute load average where /proc/stat is missing; None if neither."""
    before = _idle_and_total(cpus)
    if before is None:
        try:
            return min(float(len(cpus)), os.getloadavg()[0])
        except (OSError, AttributeError):
            return None
    time.sleep(sample_s)
    after = _idle_and_total(cpus)
    if after is None or after[1] <= before[1]:
        return None
    return len(cpus) * (1.0 - (after[0] - before[0]) / (after[1] - before[1]))


_LAST_CHOICE: list[int] = []


def set_cpu_threads(log=logging.getLogger("rlhfkit").info) -> int:
    """Set torch's intra-op threads from the cores actually free (see the module docstring) and
    log the choice when it changes; ``OMP_NUM_THREADS`` set by the user is kept as is. Returns
    the thread count in use."""
    if os.environ.get("OMP_NUM_THREADS", "").strip() or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) > 1:
        return torch.get_num_threads()  # the user's choice, or a launcher's split of the cores
    cpus = allowed_cpus()
    busy = busy_cores(cpus)
    n = choose_threads(len(cpus), busy, cgroup_quota())
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    if _LAST_CHOICE != [n]:
        _LAST_CHOICE[:] = [n]
        seen = "unknown" if busy is None else f"{busy:.1f}"
        log(f"threads: {n} (cores usable {len(cpus)}, busy elsewhere {seen}; set OMP_NUM_THREADS to choose)")
    return n


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_FREED = {"mmap": 32 * 2**20, "trim": 256 * 2**20}  # glibc's own dynamic mmap threshold stops at 32 MiB
_KEPT: list[bool] = []


def keep_freed_memory(mmap_bytes: int = KEEP_FREED["mmap"], trim_bytes: int = KEEP_FREED["trim"]) -> bool:
    """Have glibc's malloc keep freed memory for reuse: blocks up to ``mmap_bytes`` come from the heap
    (not a fresh ``mmap`` each time) and up to ``trim_bytes`` of free heap top stay mapped, so a
    step's tensors reuse the last step's pages instead of faulting in new ones (see the module
    docstring). Process-wide and idempotent; values are unchanged. Returns whether it is in effect:
    False off glibc Linux, or with ``RLHFKIT_MALLOC_DEFAULTS=1`` (glibc's own thresholds kept)."""
    if _KEPT:
        return _KEPT[0]
    ok = False
    opted_out = os.environ.get("RLHFKIT_MALLOC_DEFAULTS", "") not in ("", "0")
    if not opted_out and sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_bytes) == 1 and libc.mallopt(M_TRIM_THRESHOLD, trim_bytes) == 1
        except (OSError, AttributeError):  # pragma: no cover - a libc without mallopt
            pass
    _KEPT.append(ok)
    return ok
