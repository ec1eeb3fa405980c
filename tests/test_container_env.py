"""What the container runner hands a step from the host: settings by name, never the whole environment.

The runner's arguments only; test_container runs the steps in podman for real.
"""

from __future__ import annotations

import pytest

from pipelines.engine import docker_runner

pytestmark = pytest.mark.unit


def test_the_container_runner_passes_by_name_what_steps_need(tmp_path, monkeypatch):
    passed = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "AWS_SECRET_ACCESS_KEY": "k",
        "KDFLOW_STORAGE_ROOT": "s3://kdflow/runs",
        "OMP_NUM_THREADS": "1",  # so that a step shares the cores as a subprocess step does
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    kept = {"PYTHONPATH": "/host/src", "KDFLOW_CACHE_DIR": "/host/cache", "OMP_PROC_BIND": "true", "PATH": "/x"}
    for k, v in {**passed, **kept}.items():
        monkeypatch.setenv(k, v)
    env = docker_runner(tmp_path / ".kdflow", [], []).container_run_args["environment"]
    assert {k: env.get(k) for k in passed} == passed
    assert not set(kept) & set(env)
