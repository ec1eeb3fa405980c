"""submit / schedule against kfp.Client: no KFP API server runs here, so the client is an autospec of the
real class (a call whose name or arguments kfp.Client does not accept fails) and the tests check exactly
which calls, with which arguments, reach the API."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import kfp
import pytest
import yaml

from kdflow.errors import ConfigError
from pipelines import runner

pytestmark = pytest.mark.unit


def _client(existing_pipeline: str | None = None):
    c = mock.create_autospec(kfp.Client, instance=True)
    c.get_pipeline_id.return_value = existing_pipeline
    uploaded_irs = []

    def upload_pipeline(pipeline_package_path, pipeline_name=None, **_):
        uploaded_irs.append(next(yaml.safe_load_all(open(pipeline_package_path)))["pipelineInfo"]["name"])
        return SimpleNamespace(pipeline_id="pid-1")

    c.upload_pipeline.side_effect = upload_pipeline
    c.upload_pipeline_version.return_value = SimpleNamespace(pipeline_version_id="vid-1")
    c.create_experiment.return_value = SimpleNamespace(experiment_id="eid-1")
    c.create_recurring_run.return_value = SimpleNamespace(recurring_run_id="rr-1")
    c.create_run_from_pipeline_func.return_value = SimpleNamespace(run_id="run-1")
    c.uploaded_irs = uploaded_irs
    return c


def _names(c) -> list[str]:
    return [call[0] for call in c.method_calls]


@pytest.fixture
def client(monkeypatch):
    c = _client()
    monkeypatch.setattr(runner, "_client", lambda host: c)
    return c


def test_schedule_uploads_version_and_creates_recurring_run(client):
    rid = runner.schedule(
        "http://kfp.invalid", "0 0 3 * * *", "nightly", "default", ["distill.temperature=3"], "2026-11", "kdflow"
    )
    assert rid == "rr-1"
    assert _names(client) == [
        "get_pipeline_id",
        "upload_pipeline",
        "upload_pipeline_version",
        "create_experiment",
        "create_recurring_run",
    ]
    assert client.uploaded_irs == ["kdflow-distillation"]
    rr = client.create_recurring_run.call_args.kwargs
    assert rr["cron_expression"] == "0 0 3 * * *" and rr["max_concurrency"] == 1 and rr["no_catchup"] is True
    assert rr["pipeline_id"] == "pid-1" and rr["version_id"] == "vid-1" and rr["experiment_id"] == "eid-1"
    assert rr["params"] == {
        "profile": "default",
        "extra_overrides": ["distill.temperature=3"],
        "data_window": "2026-11",
    }


def test_schedule_adds_a_version_to_an_existing_pipeline(monkeypatch):
    c = _client(existing_pipeline="pid-9")
    monkeypatch.setattr(runner, "_client", lambda host: c)
    runner.schedule("http://kfp.invalid", "0 30 2 * * 1", "weekly", "default", [], "", "kdflow")
    assert "upload_pipeline" not in _names(c)
    assert c.upload_pipeline_version.call_args.kwargs["pipeline_id"] == "pid-9"


@pytest.mark.parametrize("cron", ["0 3 * * *", "every night", "0 0 3 * * * *"])
def test_schedule_refuses_non_six_field_cron(client, cron):
    with pytest.raises(ConfigError, match="--cron"):
        runner.schedule("http://kfp.invalid", cron, "x", "default", [], "", "kdflow")
    assert client.method_calls == []


def test_submit_validates_config_first(client):
    with pytest.raises(ConfigError, match="distill.temperature"):
        runner.submit("http://kfp.invalid", "default", ["distill.temperature=0"], "", "kdflow")
    assert client.method_calls == []
    assert runner.submit("http://kfp.invalid", "smoke", [], "2026-11", "kdflow") == "run-1"
    assert client.create_run_from_pipeline_func.call_args.kwargs["arguments"]["data_window"] == "2026-11"
