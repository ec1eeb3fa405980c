"""Stand-in for ``python`` in the local runner's task commands: hands the task to the warm worker.

KFP's SubprocessRunner starts each task as ``python -m kfp.dsl.executor_main ...``; with a warm worker
the local runner puts ``python warm_client.py`` there instead. This script (stdlib only, so it starts in
milliseconds) passes its argv, environment, working directory and its stdin/stdout/stderr descriptors
to the worker, which forks a child with torch, mlflow and kdflow already imported. It forwards SIGINT and
SIGTERM to that child and exits with the child's exit code. With no worker to reach it runs the task
itself (execv of this interpreter), so a stopped worker costs time, never a task.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

SOCKET_ENV = "KDFLOW_WARM_SOCKET"


def _fall_back(argv: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, *argv])


def _read_line(conn: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            raise ConnectionError("the warm worker closed the connection")
        buf += chunk
    return buf.decode().strip()


def main(argv: list[str]) -> int:
    path = os.environ.get(SOCKET_ENV, "")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        _fall_back(argv)
    # Handlers go in before the task exists: the child can print (and be signalled) before its pid reaches
    # us, so a signal that arrives in between is held and forwarded as soon as the pid is known.
    child: list[int] = []
    held: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        if child:
            os.kill(child[0], sig)
        else:
            held.append(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    socket.send_fds(conn, [len(request).to_bytes(8, "big")], [0, 1, 2])
    conn.sendall(request)
    child.append(int(_read_line(conn)))
    for pending in held:
        os.kill(child[0], pending)
    return int(_read_line(conn))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
