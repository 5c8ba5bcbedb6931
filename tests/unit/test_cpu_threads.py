"""The thread policy (``resources.choose_threads``) on hand-derived cases, and ``set_cpu_threads``
keeping the user's OMP_NUM_THREADS."""

from pathlib import Path

import pytest
import torch

from rlhfkit import resources
from rlhfkit.resources import busy_cores, cgroup_quota, choose_threads


@pytest.mark.parametrize("allowed,busy,quota,expected", [
    (2, 0.05, None, 2),   # idle 2-core machine: free 1.95, floor(2.20) = 2
    (2, 1.0, None, 1),    # one busy process: free 1.0, floor(1.25) = 1
    (2, 0.70, None, 1),   # a core 70% taken is not free: free 1.30, floor(1.55) = 1
    (2, 2.0, None, 1),    # both cores busy: floor(0.25) = 0, never below 1
    (16, 3.6, None, 12),  # free 12.4, floor(12.65) = 12
    (16, 0.0, 4.0, 4),    # cgroup quota of 4 cores caps the 16 usable
    (16, 0.0, 0.5, 1),    # a half-core quota still runs one thread
    (8, None, None, 8),   # unknown load: every usable core
    (8, None, 2.5, 2),    # unknown load under a 2.5-core quota: int(2.5) = 2
])
def test_choose_threads(allowed, busy, quota, expected):
    assert choose_threads(allowed, busy, quota) == expected


def test_quarter_idle_core_counts_as_free():
    # The second core counts only when >= 75% idle, i.e. busy elsewhere <= 0.25 cores:
    # busy 0.24: free 1.76 -> floor(2.01) = 2; busy 0.26: free 1.74 -> floor(1.99) = 1.
    assert choose_threads(2, 0.24) == 2
    assert choose_threads(2, 0.26) == 1


def test_cgroup_quota_parses_cpu_max(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert cgroup_quota(str(f)) == 1.5
    f.write_text("max 100000\n")
    assert cgroup_quota(str(f)) is None
    assert cgroup_quota(str(tmp_path / "missing")) is None


def test_busy_cores_is_within_the_cpus_sampled():
    cpus = resources.allowed_cpus()
    busy = busy_cores(cpus, sample_s=0.05)
    assert busy is None or -1e-9 <= busy <= len(cpus) + 1e-9


def test_user_omp_num_threads_wins(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(resources, "busy_cores", lambda *a, **k: pytest.fail("sampled despite OMP_NUM_THREADS"))
    assert resources.set_cpu_threads(log=lambda m: None) == before == torch.get_num_threads()


def test_sets_threads_from_the_free_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(resources, "allowed_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(resources, "cgroup_quota", lambda: None)
    monkeypatch.setattr(resources, "busy_cores", lambda cpus: 2.0)  # free 2.0 -> floor(2.25) = 2
    resources._LAST_CHOICE.clear()  # a pipeline earlier in this process may have logged a choice of 2
    lines = []
    try:
        assert resources.set_cpu_threads(log=lines.append) == 2 == torch.get_num_threads()
        resources.set_cpu_threads(log=lines.append)  # same choice: logged once
        assert len(lines) == 1 and lines[0].startswith("threads: 2 (cores usable 4, busy elsewhere 2.0")
    finally:
        torch.set_num_threads(before)
        resources._LAST_CHOICE.clear()


ROUNDS = """
import resource, torch
from rlhfkit import resources
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(resources.keep_freed_memory())
for _ in range(3):  # a step's worth of tensors: 8 MiB and 64 x 1 MiB, written, then all freed
    before = faults()
    big, held = torch.ones(2**21), [torch.ones(2**18) for _ in range(64)]
    del big, held
    print(faults() - before)
"""


@pytest.mark.parametrize("defaults", ["1", "0"])
def test_keep_freed_memory_reuses_pages(defaults):
    """72 MiB of tensors allocated and freed three times in a fresh process: with
    ``keep_freed_memory`` the second round reuses the first round's pages (0.8k-2.6k faults where
    the first takes ~18k; glibc 2.36's own thresholds fault the second round in anew, ~18k)."""
    import os
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    src = str(Path(resources.__file__).resolve().parents[1])  # this rlhfkit, installed or not
    env = dict(os.environ, RLHFKIT_MALLOC_DEFAULTS=defaults, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True, check=True)
    kept, *faults = out.stdout.split()
    assert kept == ("False" if defaults == "1" else "True")
    assert int(faults[0]) > 16000  # the first round's 18432 pages
    if defaults == "0":
        assert int(faults[1]) < 6000 and int(faults[2]) < 2000, faults


def test_keep_freed_memory_opt_out_and_other_platforms(monkeypatch):
    monkeypatch.setattr(resources, "_KEPT", [])
    monkeypatch.setenv("RLHFKIT_MALLOC_DEFAULTS", "1")
    assert not resources.keep_freed_memory()
    monkeypatch.setattr(resources, "_KEPT", [])
    monkeypatch.delenv("RLHFKIT_MALLOC_DEFAULTS")
    monkeypatch.setattr(resources.platform, "libc_ver", lambda: ("musl", ""))
    assert not resources.keep_freed_memory()
