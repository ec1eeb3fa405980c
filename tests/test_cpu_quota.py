"""Threads from the CPUs a step may use (#26): the cgroup quota and the affinity mask, not the host's cores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from kdflow.infra.cpu import available_cpus, cgroup_quota


def _cgroup(tmp_path, v2: str | None = None, v1: tuple[str, str] | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


@pytest.mark.unit
@pytest.mark.parametrize(
    "v2,v1,quota",
    [
        ("200000 100000", None, 2.0),  # a 2-CPU limit (cgroup v2)
        ("50000 100000", None, 0.5),
        ("max 100000", None, None),  # unlimited
        (None, ("150000", "100000"), 1.5),  # cgroup v1
        (None, ("-1", "100000"), None),  # v1 unlimited
        (None, None, None),  # no cgroup files (not Linux, or not mounted)
    ],
)
def test_cgroup_quota_v1_and_v2(tmp_path, v2, v1, quota):
    assert cgroup_quota(_cgroup(tmp_path, v2, v1)) == quota


@pytest.mark.unit
def test_available_cpus_is_the_quota_rounded_up_within_the_affinity_mask(tmp_path):
    mask = len(os.sched_getaffinity(0))
    assert available_cpus(_cgroup(tmp_path / "a", "50000 100000")) == 1  # half a CPU is still one thread
    assert available_cpus(_cgroup(tmp_path / "b", f"{64 * 100000} 100000")) == mask  # quota above the mask
    assert available_cpus(_cgroup(tmp_path / "c", "max 100000")) == mask


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_a_step_started_on_one_cpu_uses_one_thread(tmp_path):
    """The step's own start (start_pipeline) sizes torch's threads; under `taskset -c 0` that is 1, without
    it every CPU of the mask; train.num_threads still wins."""
    code = (
        "import sys, torch\n"
        "from kdflow.config import build_config\n"
        "from kdflow.steps.context import RunContext, start_pipeline\n"
        "threads = sys.argv[1]\n"
        "cfg = build_config({'tracking': {'enabled': False}, 'train': {'num_threads': int(threads) if threads else None}})\n"
        "start_pipeline(cfg, RunContext())\n"
        "print(torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}

    def threads(prefix: list[str], explicit: str = "") -> int:
        done = subprocess.run([*prefix, sys.executable, "-c", code, explicit], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-500:]
        return int(done.stdout.strip().splitlines()[-1])

    assert threads(["taskset", "-c", "0"]) == 1
    assert threads([]) == len(os.sched_getaffinity(0))
    assert threads(["taskset", "-c", "0"], "3") == 3
