"""Each KFP component's python_func called with real artifact objects on a tiny real data subset.

MLflow runs against a real sqlite store in a temp dir; the Kubernetes parts cannot run here.
"""

from __future__ import annotations

import json

import pytest
import yaml
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Markdown, Metrics, Model

import components as C
from pipelines.distillation import EMBEDDED_CONFIG

pytestmark = pytest.mark.integration


class _Status:
    state = "SUCCEEDED"
    pipeline_job_resource_name = "local"
    pipeline_task_name = "exit-handler-1"
    error_code = None
    error_message = None


def _art(cls, tmp, name):
    return cls(name=name, uri=str(tmp / name), metadata={})


@pytest.fixture(scope="module")
def run(tmp_path_factory, fashion_available):
    tmp = tmp_path_factory.mktemp("components")
    overrides = [
        "tracking.enabled=true",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"storage.state_dir={tmp}/state",
        "data.train_subset=2000",
        "data.val_size=400",
        "data.test_subset=400",
        "train.batch_size=64",
        "evaluate.latency_repeats=5",
        "evaluate.throughput_repeats=2",
        "export.calibration_samples=256",
        "adversarial.eval_samples=100",  # the robustness figures on 100 images: wiring is under test
        "gate.min_accuracy=0.3",
        "gate.min_retention=0.3",
        # the test checks wiring, not speed: a loaded CI machine must not fail the latency budget
        "gate.max_latency_p95_ms=1000",
        "export.int8_min_agreement=0.9",
    ]
    a = {
        n: _art(cls, tmp, n)
        for n, cls in [
            ("dataset", Dataset),
            ("config", Artifact),
            ("teacher", Model),
            ("teacher_metrics", Metrics),
            ("scratch", Model),
            ("scratch_metrics", Metrics),
            ("student", Model),
            ("student_metrics", Metrics),
            ("baselines", Model),
            ("eval_metrics", Metrics),
            ("confusion", ClassificationMetrics),
            ("report", Markdown),
            ("evaluation", Artifact),
            ("exported", Model),
            ("export_metrics", Metrics),
            ("export_report", Markdown),
        ]
    }
    rid = "component-test-run"
    C.prep_data.python_func(
        config_yaml=EMBEDDED_CONFIG,
        profile="smoke",
        extra_overrides=overrides,
        pipeline_run_id=rid,
        dataset_name="",
        data_window="w1",
        teacher_arch="",
        teacher_source="",
        student_arch="",
        method="",
        temperature=-1.0,
        alpha=0.2,
        teacher_epochs=-1,
        student_epochs=-1,
        min_accuracy=-1.0,
        min_retention=-1.0,
        min_improvement=-1.0,
        data_free=False,
        adversarial_eps=-1.0,
        min_robust_accuracy=-1.0,
        dataset=a["dataset"],
        config=a["config"],
    )
    C.train_teacher.python_func(
        config=a["config"],
        dataset=a["dataset"],
        pipeline_run_id=rid,
        teacher=a["teacher"],
        metrics=a["teacher_metrics"],
    )
    C.train_student_scratch.python_func(
        config=a["config"],
        dataset=a["dataset"],
        pipeline_run_id=rid,
        student=a["scratch"],
        metrics=a["scratch_metrics"],
    )
    C.distill_student.python_func(
        config=a["config"],
        dataset=a["dataset"],
        teacher=a["teacher"],
        pipeline_run_id=rid,
        student=a["student"],
        metrics=a["student_metrics"],
    )
    C.train_transfer_baselines.python_func(  # this data has no unlabeled transfer set: the index says so
        config=a["config"],
        dataset=a["dataset"],
        teacher=a["teacher"],
        scratch=a["scratch"],
        pipeline_run_id=rid,
        baselines=a["baselines"],
    )
    assert a["baselines"].metadata["trained"] == []
    quality = C.evaluate.python_func(
        config=a["config"],
        dataset=a["dataset"],
        teacher=a["teacher"],
        scratch=a["scratch"],
        student=a["student"],
        baselines=a["baselines"],
        pipeline_run_id=rid,
        metrics=a["eval_metrics"],
        confusion=a["confusion"],
        report=a["report"],
        evaluation=a["evaluation"],
    )
    gate = C.export.python_func(
        config=a["config"],
        dataset=a["dataset"],
        student=a["student"],
        evaluation=a["evaluation"],
        pipeline_run_id=rid,
        exported=a["exported"],
        metrics=a["export_metrics"],
        report=a["export_report"],
    )
    promo = json.loads(
        C.register_and_promote.python_func(
            config=a["config"], dataset=a["dataset"], student=a["student"], exported=a["exported"], pipeline_run_id=rid
        )
    )
    C.finalize.python_func(
        config_yaml=EMBEDDED_CONFIG, profile="smoke", extra_overrides=overrides, pipeline_run_id=rid, status=_Status()
    )
    return {"a": a, "quality": quality, "gate": gate, "promo": promo, "tmp": tmp, "rid": rid}


def test_config_resolved_once_with_parameters(run):
    cfg = yaml.safe_load(open(run["a"]["config"].path))
    assert cfg["distill"]["alpha"] == 0.2 and cfg["data"]["window"] == "w1" and cfg["profile"] == "smoke"
    assert run["a"]["config"].metadata["config_hash"]


def test_artifact_metadata_carries_lineage(run):
    a = run["a"]
    digest = a["dataset"].metadata["digest"]
    assert len(digest) == 64
    for name in ("teacher", "scratch", "student"):
        md = a[name].metadata
        assert md["data_digest"] == digest and md["arch"] and md["run_id"] and md["model_id"].startswith("m-")
        assert md["parameters"] > 0
    assert a["student"].metadata["kdflow.teacher_model_id"] == a["teacher"].metadata["model_id"]
    assert a["teacher"].metadata["registered_version"] == "1"


def test_metrics_and_report(run):
    a = run["a"]
    assert 0.3 < a["student_metrics"].metadata["test_accuracy"] <= 1.0
    assert "student_accuracy" in a["eval_metrics"].metadata
    cm = a["confusion"].metadata["confusionMatrix"]
    assert len(cm["rows"]) == 10 and len(cm["annotationSpecs"]) == 10
    report = open(a["export_report"].path).read()
    assert "student ONNX int8" in report and "## Gate" in report and "kdflow.teacher_model_id" in report


def test_gate_and_promotion(run):
    report = open(run["a"]["export_report"].path).read()
    assert run["quality"] is True and run["gate"] is True, report
    assert run["promo"]["promoted"] is True and run["promo"]["reason"] == "first champion"


def test_mlflow_parent_and_children_closed(run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run['tmp']}/mlflow.db")
    exp = client.get_experiment_by_name("kdflow")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`kdflow.pipeline_run_id` = '{run['rid']}'")
    steps = {r.data.tags["kdflow.step"]: r for r in runs}
    assert set(steps) >= {
        "pipeline",
        "prep_data",
        "train_teacher",
        "train_student_scratch",
        "distill_student",
        "evaluate",
        "export",
        "register_and_promote",
    }
    parent = steps["pipeline"]
    assert parent.info.status == "FINISHED"  # closed by finalize
    for name, r in steps.items():
        if name != "pipeline":
            assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert r.info.status == "FINISHED"
    d = steps["distill_student"].data
    assert d.params["distill.hard_weight"] == "0.2" and d.params["distill.soft_weight"] == "0.8"
    assert "hard" in d.metrics and "soft" in d.metrics and "val_acc" in d.metrics
    history = client.get_metric_history(steps["distill_student"].info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]  # smoke profile: 2 epochs, one point per epoch
    mv = client.get_model_version_by_alias("kd-student", "champion")
    assert mv.tags["kdflow.data_digest"] == run["a"]["dataset"].metadata["digest"]
