"""End to end: the CLI distill command, and the whole KFP DAG on the local runner (smoke profile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.e2e
def test_cli_run_smoke(tmp_path):
    """`kdflow run --config configs/fashion_mnist.yaml --profile smoke --scratch`: every step, one command."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdflow.cli",
            "run",
            "--config",
            "configs/fashion_mnist.yaml",
            "--profile",
            "smoke",
            "--scratch",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| student (distilled) |" in proc.stdout and "| teacher |" in proc.stdout
    ev = json.loads((tmp_path / "run" / "evaluation" / "evaluation.json").read_text())
    assert ev["models"]["student"]["accuracy"] > 0.6
    for f in ("report.md", "confusion_student.png", "reliability.png", "loss_curves.png"):
        assert (tmp_path / "run" / "evaluation" / f).stat().st_size > 0
    assert (tmp_path / "run" / "student" / "config.resolved.yaml").is_file()


@pytest.mark.e2e
def test_local_pipeline_smoke(smoke_dag):
    """The same DAG as the compiled YAML, run by kfp.local.SubprocessRunner on a real data subset
    (the session's smoke_dag fixture; budgets loosened there: this test is about wiring, not speed)."""
    summary = smoke_dag
    ev, ex = summary["evaluation"], summary["export"]
    assert ev["models"]["student"]["accuracy"] > 0.6  # chance is 0.1
    assert ex["parity_ok"] and set(ex["forms"]) == {"onnx", "onnx_int8", "torchscript"}
    report = open(summary["report"]).read()
    assert "## Gate" in report and "student ONNX int8" in report
    run_dir = summary["run_dir"]
    for name in (
        "student.onnx",
        "student.int8.onnx",
        "student.torchscript.pt",
        "model.pt",
        "train.pt",
        "test.pt",
        "manifest.json",
        "evaluation.json",
        "reliability.png",
    ):
        hits = list(__import__("pathlib").Path(run_dir).rglob(name))
        assert hits and all(h.stat().st_size > 0 for h in hits), name
    assert ex["gate"]["passed"], ex["gate"]
    assert summary["promotion"]["promoted"] is True
    # where the time went: every step's seconds and the overhead, printed and on the MLflow pipeline run
    rows = {step: seconds for step, seconds, _ in summary["step_seconds"]}
    from kdflow.steps.timing import OVERHEAD, STEP_ORDER

    assert list(rows) == [*STEP_ORDER, OVERHEAD]
    assert all(s > 0 for s in rows.values()) and sum(rows.values()) == pytest.approx(summary["wall_seconds"])
    import mlflow

    client = mlflow.MlflowClient(summary["tracking_uri"])
    parent = client.search_runs(
        [client.get_experiment_by_name("kdflow").experiment_id], filter_string="tags.`kdflow.step` = 'pipeline'"
    )[0]
    assert {f"step_seconds.{s}" for s in rows} <= set(parent.data.metrics)
    assert parent.data.metrics["pipeline_wall_seconds"] == pytest.approx(summary["wall_seconds"])
