"""The long measurements of bench/ (hours each on 2 cores) run one after another in the background, resumably.

    .venv/bin/python bench/queue_runner.py start [--queue bench/queue.txt]   # detached, lowest CPU priority
    .venv/bin/python bench/queue_runner.py status                            # each job: done, failed, running, waiting
    .venv/bin/python bench/queue_runner.py pause | resume | stop

The queue file holds one job per line, ``name | command`` (``#`` starts a comment), run with bash from the
directory the queue was started in; it is read again before each job, so jobs added meanwhile run too. A job that exits 0 is done and never runs again; one that fails is
recorded with its exit code and the queue goes on (``start --retry-failed`` runs it again). A job that is
stopped (``stop``, a reboot, the end of a session) is started again by the next ``start``: every command in
it must resume from its own checkpoints (bench/tune.py and bench/adversarial.py do). The runner and its
jobs run at nice 19 in their own autogroup, so interactive work and the tests keep the cores; timing
benchmarks (bench/suite.py) pause the queue while they measure and resume it after.

Run it from a git worktree at a fixed commit (``git worktree add ../bench-tree HEAD``) when the code under
a job must not change while you edit; ``KDFLOW_RESULTS=/path/to/checkout/bench/RESULTS.md`` then writes the
jobs' sections (and plots) into the working checkout instead of the worktree's. State: bench/_work/queue/ (state.json, runner.pid, one log per job;
KDFLOW_QUEUE_STATE=DIR puts it elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE_DIR = Path(os.environ.get("KDFLOW_QUEUE_STATE") or Path(__file__).resolve().parent / "_work" / "queue")
PID_FILE = STATE_DIR / "runner.pid"
STATE = STATE_DIR / "state.json"


def parse_queue(path: Path) -> list[tuple[str, str]]:
    jobs = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition("|")
        if not sep or not name.strip() or not command.strip():
            raise SystemExit(f"queue: error: {path}:{n}: not 'name | command'; fix: write one job per line")
        jobs.append((name.strip(), command.strip()))
    names = [n for n, _ in jobs]
    if len(set(names)) != len(names):
        raise SystemExit(f"queue: error: {path}: a job name appears twice; fix: give each job its own name")
    return jobs


def read_state() -> dict:
    return json.loads(STATE.read_text()) if STATE.is_file() else {}


def write_state(state: dict) -> None:
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(STATE)


def runner_pid() -> int | None:
    """The live runner's pid (its process group), or None."""
    try:
        pid = int(PID_FILE.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def next_job(jobs: list[tuple[str, str]], state: dict, retry_failed: bool, retried: set[str]) -> tuple[str, str] | None:
    """The first job not done; a failed one only with ``retry_failed``, once per runner."""
    for name, command in jobs:
        entry = state.get(name, {})
        same = entry.get("command") == command  # an edited command is a new job
        if same and entry.get("rc") == 0:
            continue
        if same and entry.get("rc") is not None and (not retry_failed or name in retried):
            continue
        return name, command
    return None


def run_queue(queue: Path, cwd: Path, retry_failed: bool) -> None:
    """The runner itself (in its own session): each job not yet done, in order."""
    os.nice(19 - os.nice(0))
    try:  # its own autogroup at the lowest weight: nice alone does not yield to other sessions' groups
        Path("/proc/self/autogroup").write_text("19")
    except OSError:
        pass
    retried: set[str] = set()
    while (job := next_job(parse_queue(queue), read_state(), retry_failed, retried)) is not None:
        name, command = job  # the file is read again before each job: jobs added meanwhile are run too
        retried.add(name)
        state = read_state()
        state[name] = {"command": command, "started": _now(), "rc": None}
        write_state(state)
        with open(STATE_DIR / f"{name}.log", "a") as log:
            log.write(f"\n=== {_now()} {command}\n")
            log.flush()
            rc = subprocess.run(["bash", "-c", command], cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode
        state = read_state()
        state[name].update(rc=rc, finished=_now())
        write_state(state)


def start(args) -> int:
    if (pid := runner_pid()) is not None:
        print(f"queue: already running (pid {pid}); `queue_runner.py status`")
        return 1
    queue = Path(args.queue).resolve()
    parse_queue(queue)  # a malformed file fails here, not in the background
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "_run", "--queue", str(queue)] + (["--retry-failed"] if args.retry_failed else [])
    with open(STATE_DIR / "runner.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=Path.cwd(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    PID_FILE.write_text(str(proc.pid))
    print(f"queue: started (pid {proc.pid}); logs in {STATE_DIR}")
    return 0


def signal_group(sig: signal.Signals, verb: str) -> int:
    pid = runner_pid()
    if pid is None:
        print("queue: no runner is running")
        return 0
    os.killpg(pid, sig)
    print(f"queue: {verb} (process group {pid})")
    return 0


def status(args) -> int:
    state, pid = read_state(), runner_pid()
    print(f"queue: runner {'running, pid ' + str(pid) if pid else 'not running'}")
    for name, command in parse_queue(Path(args.queue)):
        entry = state.get(name, {})
        if entry.get("command") != command:
            what = "waiting"
        elif entry.get("rc") is None:
            what = f"running since {entry['started']}" if pid else f"stopped (started {entry['started']})"
        else:
            what = "done" if entry["rc"] == 0 else f"failed (exit {entry['rc']})"
            what += f", {entry.get('finished', '')}"
        log = STATE_DIR / f"{name}.log"
        last = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-1:] if log.is_file() else []
        print(f"- {name}: {what}" + (f"\n    {last[0][:160]}" if last else ""))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["start", "status", "pause", "resume", "stop", "_run"])
    p.add_argument("--queue", default=str(Path(__file__).resolve().parent / "queue.txt"))
    p.add_argument("--retry-failed", action="store_true")
    a = p.parse_args()
    if a.action == "_run":
        run_queue(Path(a.queue), Path.cwd(), a.retry_failed)
        PID_FILE.unlink(missing_ok=True)
        return 0
    if a.action == "start":
        return start(a)
    if a.action == "status":
        return status(a)
    if a.action == "stop":
        if (pid := runner_pid()) is not None:
            os.killpg(pid, signal.SIGCONT)  # a paused group cannot act on SIGTERM
            os.killpg(pid, signal.SIGTERM)
            time.sleep(1)
            PID_FILE.unlink(missing_ok=True)
        print("queue: stopped; `start` runs the stopped job again (from its checkpoints)")
        return 0
    return signal_group(signal.SIGSTOP if a.action == "pause" else signal.SIGCONT, a.action + "d")


if __name__ == "__main__":
    sys.exit(main())
