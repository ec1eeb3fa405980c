"""How many CPUs this process may use: the affinity mask and the cgroup CPU quota, not the host's cores.

torch (and onnxruntime, which kdflow sizes from torch) starts one thread per core of the host. In a
container limited to 2 CPUs on a 64-core node that is 64 threads time-sliced onto 2 CPUs' worth of quota:
every parallel region waits for throttled threads, and epochs run many times slower. The quota is read
from cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up, and
capped by the affinity mask (``taskset``, Kubernetes' static CPU manager).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """CPUs the cgroup grants (quota / period), or None when unlimited or unknown."""
    v2 = _read(root / "cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    v1_quota, v1_period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if v1_quota and v1_period and int(v1_quota) > 0:
        return int(v1_quota) / int(v1_period)
    return None


def available_cpus(root: Path = CGROUP) -> int:
    """Whole CPUs this process may use: min(affinity mask, ceil(cgroup quota)), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_quota(root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def fit_threads(explicit: int | None = None) -> int:
    """Set torch's intra-op threads to ``explicit`` (``train.num_threads``), else to an operator's
    OMP_NUM_THREADS, else to the CPUs available; returns the count."""
    import torch

    n = explicit or _env_threads() or available_cpus()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
