"""The local runner's warm worker: a task forked from it behaves as the cold process would.

The whole-DAG equivalence (the same accuracies with every step forked warm as with every step a fresh
process in the image) is checked by test_container's smoke DAG; here, the process contract itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pipelines.warm import CLIENT, warm_worker
from pipelines.warm_client import SOCKET_ENV

pytestmark = pytest.mark.integration

PROBE = """
import json, os, sys, tempfile
import probe_state
probe_state.CALLS.append(1)
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": os.environ.get("PROBE_VALUE"),
                  "stdin": sys.stdin.read(), "calls": len(probe_state.CALLS), "pid": os.getpid(),
                  "tmp": tempfile.gettempdir()}))
print("to stderr", file=sys.stderr)
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    mods = tmp_path_factory.mktemp("mods")
    (mods / "probe_task.py").write_text(PROBE)
    (mods / "probe_state.py").write_text("CALLS = []\n")
    with warm_worker(max_seconds=600) as pid:
        yield pid, mods, os.environ[SOCKET_ENV]
    assert _gone(pid), "the worker outlived its run"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _task(mods, *args, stdin="", **env):
    full_env = {**os.environ, "PYTHONPATH": str(mods), **env}
    return subprocess.run(
        [sys.executable, str(CLIENT), "-m", "probe_task", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=mods,
        timeout=60,
    )


def test_a_task_gets_its_argv_env_cwd_streams_and_exit_code(worker):
    import json

    pid, mods, _ = worker
    (mods / "scratch").mkdir(exist_ok=True)
    done = _task(
        mods, "--flag", "value", stdin="fed in", PROBE_VALUE="x1", PROBE_EXIT="3", TMPDIR=str(mods / "scratch")
    )
    assert done.returncode == 3
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["--flag", "value"] and seen["cwd"] == str(mods) and seen["env"] == "x1"
    assert seen["stdin"] == "fed in" and done.stderr.strip() == "to stderr"
    assert seen["tmp"] == str(mods / "scratch")  # its own TMPDIR, not the one the worker started with
    assert seen["pid"] not in (pid, os.getpid())  # a process of its own, forked from the worker


def test_each_task_is_its_own_process_state_does_not_carry_over(worker):
    import json

    _, mods, _ = worker
    first, second = (json.loads(_task(mods).stdout) for _ in range(2))
    assert first["calls"] == second["calls"] == 1 and first["pid"] != second["pid"]


def test_sigterm_to_the_task_reaches_the_forked_process(worker):
    _, mods, _ = worker
    (mods / "probe_sleep.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen(
        [sys.executable, str(CLIENT), "-m", "probe_sleep"],
        env={**os.environ, "PYTHONPATH": str(mods)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGTERM)
    # 128 + SIGTERM: the forked task died of the forwarded signal (the client itself would exit -SIGTERM)
    assert proc.wait(20) == 128 + signal.SIGTERM


def test_without_a_worker_the_task_runs_cold(tmp_path):
    (tmp_path / "probe_task.py").write_text(PROBE)
    (tmp_path / "probe_state.py").write_text("CALLS = []\n")
    done = _task(tmp_path, stdin="cold", **{SOCKET_ENV: str(tmp_path / "no-such.sock"), "PROBE_EXIT": "4"})
    assert done.returncode == 4 and '"stdin": "cold"' in done.stdout


def test_a_kept_worker_serves_the_next_run_and_stops_when_idle_or_at_exit(tmp_path):
    """run_local keeps its worker (keep=True): the next run in the process reuses it; left idle it exits by
    itself, and the next run starts another; the process's exit stops it by PID."""
    from pipelines import warm

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "probe_task.py").write_text(PROBE)
    (mods / "probe_state.py").write_text("CALLS = []\n")
    socket_before = os.environ.get(SOCKET_ENV)  # the module's worker fixture may hold one
    warm._stop_kept()  # a worker an earlier DAG run of this process kept (idle 600 s) is not this test's
    try:
        with warm_worker(keep=True, idle_seconds=5) as first:
            assert _task(mods).returncode == 0
        assert not _gone(first) and os.environ.get(SOCKET_ENV) == socket_before  # outlives the block, patch undone
        with warm_worker(keep=True, idle_seconds=5) as again:
            assert again == first and _task(mods).returncode == 0
        warm._KEPT[0].proc.wait(120)  # no task for 5 s: it exits by itself
        assert _gone(first)
        with warm_worker(keep=True) as replaced:
            assert replaced != first and _task(mods).returncode == 0
        warm._stop_kept()  # what the process's exit runs (atexit)
        assert _gone(replaced) and not warm._KEPT
    finally:
        warm._stop_kept()
