"""A warm worker for the local runner: one process imports torch, mlflow, kfp and kdflow once and forks a
child per task, so the DAG's steps stop paying those imports each (the pipeline's own overhead).

    with warm_worker(keep=True):            # the local runner's tasks now start warm
        ...                                  # kfp.local SubprocessRunner(use_venv=False) runs the DAG

Each child runs exactly what the cold process would (``python -m kfp.dsl.executor_main ...`` with the
task's argv, environment and working directory, its stdin/stdout/stderr the task's own), in a process of
its own: a step's state never leaks into the next. The server is single-threaded (fork-safe), never runs a
tensor op before forking (no thread pool to inherit), binds a Unix socket in a private directory, exits
after ``max_seconds`` or ``idle_seconds`` without a task, and is stopped by its PID when the block ends
(``keep``: when the process exits; the next run reuses it). ``KDFLOW_WARM=0`` turns it off.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.warm_client import SOCKET_ENV

CLIENT = Path(__file__).resolve().parent / "warm_client.py"
PRELOAD = (
    "torch",
    "mlflow",
    "kfp.dsl",
    "kfp.dsl.executor",  # not executor_main itself: each task runs it afresh as __main__
    "kdflow.steps",
    "kdflow.infra.tracking",
    "kdflow.infra.storage",
    "kdflow.release.export",
    "kdflow.release.registry",
    "kdflow.evaluation.robustness",
    "kdflow.tune.rounds",
    "onnxruntime",
    "mlflow.store.tracking.sqlalchemy_store",  # every step opens the local store: 0.7 s each
    "torch._dynamo",  # the steps that log a model reach it through mlflow.pytorch: 1.3 s each
)


def enabled() -> bool:
    return os.environ.get("KDFLOW_WARM", "1") != "0"


# ----------------------------------------------------------------------------- the server


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _flags, _addr = socket.recv_fds(conn, 8, 3)
    size = int.from_bytes(head, "big")
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the client went away mid-request")
        body += chunk
    return json.loads(body), fds


def _run_child(listener: socket.socket, conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the task's process, run the executor module, exit with its code."""
    import runpy

    code = 1
    try:
        listener.close()
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own standard streams
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # the task's TMPDIR, read afresh as a new process would (not the worker's)
        # sys.path as `python -m` would build it for this task: its cwd, its PYTHONPATH, then the rest
        extra = [e for e in request["env"].get("PYTHONPATH", "").split(os.pathsep) if e]
        sys.path[:] = [request["cwd"], *extra, *(e for e in _BASE_PATH if e not in extra)]
        argv = list(request["argv"])
        if argv[:1] != ["-m"] or len(argv) < 2:
            raise SystemExit(f"warm worker: only `-m MODULE ...` tasks run warm, got {argv[:2]}")
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:  # the task's traceback goes to the task's stderr, as in a cold process
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


_BASE_PATH: list[str] = []


def serve(path: str, max_seconds: float, idle_seconds: float = float("inf")) -> None:
    """Accept tasks on the Unix socket ``path`` until ``max_seconds`` have passed, ``idle_seconds`` passed
    with no task running or arriving, or SIGTERM."""
    import importlib

    own = {os.getcwd(), *(e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e)}
    _BASE_PATH[:] = [e for e in sys.path if e and e not in own]

    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    children: dict[int, socket.socket] = {}
    deadline = time.monotonic() + max_seconds
    last_busy = time.monotonic()
    signal.signal(signal.SIGTERM, _stop)
    try:
        while time.monotonic() < deadline and (children or time.monotonic() - last_busy < idle_seconds):
            ready, _, _ = select.select([listener], [], [], 0.1)
            if children:
                last_busy = time.monotonic()
            if ready:
                conn, _ = listener.accept()
                try:
                    request, fds = _recv_request(conn)
                except (OSError, ValueError, ConnectionError):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    _run_child(listener, conn, request, fds)
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    conn.sendall(f"{pid}\n".encode())
                children[pid] = conn
            _reap(children)
    finally:
        listener.close()
        for pid in list(children):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


def _stop(*_args) -> None:
    raise SystemExit(0)


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(f"{code if code >= 0 else 128 - code}\n".encode())
            conn.close()


# ----------------------------------------------------------------------------- the local runner's side


class _Worker:
    """A started worker: its process, its socket and the private folder that holds it."""

    def __init__(self, max_seconds: float, idle_seconds: float) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="kdflow-warm-")
        os.chmod(self.tmp.name, 0o700)
        self.path = str(Path(self.tmp.name) / "worker.sock")
        self.started, self.max_seconds = time.monotonic(), max_seconds
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        env.setdefault("MPLBACKEND", "Agg")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.warm", self.path, str(max_seconds), str(idle_seconds)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"the warm worker did not start (exit {self.proc.poll()}); KDFLOW_WARM=0 runs cold")

    def fresh(self) -> bool:
        """Alive, with at least half its lifetime left (a long DAG must not outlive it)."""
        return self.proc.poll() is None and time.monotonic() - self.started < self.max_seconds / 2

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.tmp.cleanup()


_KEPT: list[_Worker] = []  # keep=True: one worker per process, reused by the next run, stopped at exit


def _stop_kept() -> None:
    while _KEPT:
        _KEPT.pop().stop()


atexit.register(_stop_kept)  # nothing to do unless a run kept its worker


@contextlib.contextmanager
def warm_worker(max_seconds: float = 6 * 3600, keep: bool = False, idle_seconds: float = 600):
    """Start the worker, point the SubprocessRunner's tasks at it, stop it by PID when the block ends.

    ``keep``: the worker outlives the block, and the next ``warm_worker(keep=True)`` in this process reuses
    it (a process that runs DAG after DAG, e.g. scheduled retraining in one Python process, starts it once);
    it is stopped by its PID at exit, and exits by itself after ``idle_seconds`` without a task."""
    if not enabled():
        yield None
        return
    from kfp.local import subprocess_task_handler

    if keep:
        if _KEPT and not _KEPT[0].fresh():
            _stop_kept()
        if not _KEPT:
            _KEPT.append(_Worker(max_seconds, idle_seconds))
        worker = _KEPT[0]
    else:
        worker = _Worker(max_seconds, idle_seconds)
    original = subprocess_task_handler.environment
    command = f"{sys.executable} {CLIENT}"

    @contextlib.contextmanager
    def warm_environment(use_venv: bool, runner_config=None, has_pip_install: bool = False):
        if use_venv or has_pip_install:
            with original(use_venv, runner_config, has_pip_install) as exe:
                yield exe
        else:
            yield command

    subprocess_task_handler.environment = warm_environment
    before = os.environ.get(SOCKET_ENV)
    os.environ[SOCKET_ENV] = worker.path
    try:
        yield worker.proc.pid
    finally:
        subprocess_task_handler.environment = original
        if before is None:
            os.environ.pop(SOCKET_ENV, None)
        else:
            os.environ[SOCKET_ENV] = before
        if worker not in _KEPT:
            worker.stop()


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else float("inf"))
