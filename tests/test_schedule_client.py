"""submit / schedule against a stub of kfp.Client: no KFP API server runs here, so the client is replaced
by a recorder and the test checks exactly which calls, with which arguments, reach the API."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from kdflow.errors import ConfigError
from pipelines import runner


class RecordingClient:
    def __init__(self, existing_pipeline: str | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.existing = existing_pipeline

    def _rec(self, call, **kw):
        self.calls.append((call, kw))

    def get_pipeline_id(self, name):
        self._rec("get_pipeline_id", name=name)
        return self.existing

    def upload_pipeline(self, path, pipeline_name):
        ir = next(yaml.safe_load_all(open(path)))
        self._rec("upload_pipeline", path=path, pipeline_name=pipeline_name, ir_name=ir["pipelineInfo"]["name"])
        return SimpleNamespace(pipeline_id="pid-1")

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id):
        self._rec("upload_pipeline_version", version=pipeline_version_name, pipeline_id=pipeline_id)
        return SimpleNamespace(pipeline_version_id="vid-1")

    def create_experiment(self, name):
        self._rec("create_experiment", name=name)
        return SimpleNamespace(experiment_id="eid-1")

    def create_recurring_run(self, **kw):
        self._rec("create_recurring_run", **kw)
        return SimpleNamespace(recurring_run_id="rr-1")

    def create_run_from_pipeline_func(self, func, arguments, experiment_name, enable_caching):
        self._rec("create_run", arguments=arguments, experiment_name=experiment_name, name=func.name)
        return SimpleNamespace(run_id="run-1")


@pytest.fixture
def client(monkeypatch):
    c = RecordingClient()
    monkeypatch.setattr(runner, "_client", lambda host: c)
    return c


def test_schedule_uploads_version_and_creates_recurring_run(client):
    rid = runner.schedule("http://kfp.invalid", "0 0 3 * * *", "nightly", "default", ["distill.temperature=3"],
                          "2026-11", "kdflow")
    assert rid == "rr-1"
    names = [n for n, _ in client.calls]
    assert names == ["get_pipeline_id", "upload_pipeline", "upload_pipeline_version", "create_experiment",
                     "create_recurring_run"]
    assert client.calls[1][1]["ir_name"] == "kdflow-distillation"
    rr = client.calls[-1][1]
    assert rr["cron_expression"] == "0 0 3 * * *" and rr["max_concurrency"] == 1 and rr["no_catchup"] is True
    assert rr["pipeline_id"] == "pid-1" and rr["version_id"] == "vid-1" and rr["experiment_id"] == "eid-1"
    assert rr["params"] == {"profile": "default", "extra_overrides": ["distill.temperature=3"], "data_window": "2026-11"}


def test_schedule_adds_a_version_to_an_existing_pipeline(monkeypatch):
    c = RecordingClient(existing_pipeline="pid-9")
    monkeypatch.setattr(runner, "_client", lambda host: c)
    runner.schedule("http://kfp.invalid", "0 30 2 * * 1", "weekly", "default", [], "", "kdflow")
    names = [n for n, _ in c.calls]
    assert "upload_pipeline" not in names and c.calls[1][1]["pipeline_id"] == "pid-9"


@pytest.mark.parametrize("cron", ["0 3 * * *", "every night", "0 0 3 * * * *"])
def test_schedule_refuses_non_six_field_cron(client, cron):
    with pytest.raises(ConfigError, match="--cron"):
        runner.schedule("http://kfp.invalid", cron, "x", "default", [], "", "kdflow")
    assert client.calls == []


def test_submit_validates_config_first(client):
    with pytest.raises(ConfigError, match="distill.temperature"):
        runner.submit("http://kfp.invalid", "default", ["distill.temperature=0"], "", "kdflow")
    assert client.calls == []
    assert runner.submit("http://kfp.invalid", "smoke", [], "2026-11", "kdflow") == "run-1"
    assert client.calls[-1][1]["arguments"]["data_window"] == "2026-11"
