"""ARD and data-free distillation end to end on the smoke profile: the CLI, MLflow, the report, the KFP DAG."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from helpers import ROOT

from kdflow.infra.checkpoints import load_model

pytestmark = pytest.mark.e2e
# a quarter of the smoke profile's generator steps (two epochs of five): these tests check what DFAD reads and
# records, not its student
DFAD = [
    "--set", "distill.method=dfad", "--set", "distill.data_free=true",
    "--set", "distill.generator.iterations=10", "--set", "distill.generator.iterations_per_epoch=5",
]  # fmt: skip


def kdflow(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdflow.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


@pytest.fixture(scope="module")
def ard_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, str]:
    """`kdflow run --scratch` with method ard on the smoke profile (its teacher and data serve the others)."""
    tmp = tmp_path_factory.mktemp("ard")
    uri = f"sqlite:///{tmp}/mlflow.db"
    proc = kdflow(
        "run",
        "--profile",
        "smoke",
        "--scratch",
        "--out",
        str(tmp / "run"),
        "--set",
        "distill.method=ard",
        "--set",
        "gate.min_robust_accuracy=0.99",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", proc, uri


def test_ard_from_the_cli_reports_robustness_everywhere(ard_run):
    run, proc, uri = ard_run
    assert "| student (ARD) |" in proc.stdout and "| student (scratch, PGD-AT) |" in proc.stdout
    assert "PGD-10 eps=0.1" in proc.stdout and "robust gain over scratch" in proc.stdout
    ev = json.loads((run / "evaluation" / "evaluation.json").read_text())
    for name in ("teacher", "scratch", "student"):
        m = ev["models"][name]
        assert 0 <= m["pgd_accuracy"] <= m["fgsm_accuracy"] <= 1, name  # PGD at least as strong as FGSM
        assert m["pgd_accuracy"] < m["accuracy"]
        curve = [c["pgd_accuracy"] for c in m["robustness_curve"]]
        assert [c["eps"] for c in m["robustness_curve"]] == [0.0, 0.05, 0.1, 0.15, 0.2]
        assert curve == sorted(curve, reverse=True) and m["robust_samples"] == 200
    assert ev["scratch_adversarial"] and ev["method"] == "ard"
    # the gate reads the student's robust accuracy on the release split (not test) and fails it at 0.99
    check = ev["quality_gate"]["checks"]["release_robust_accuracy"]
    assert not check["passed"] and check["rule"].startswith(
        f"PGD {ev['models']['student']['release_pgd_accuracy']:.4f}"
    )
    report = (run / "evaluation" / "report.md").read_text()
    assert "robustness.png" in report and "Robust accuracy: L-inf" in report
    assert (run / "evaluation" / "robustness.png").stat().st_size > 0
    # the scratch twin and the student trained on adversarial examples: the fingerprints carry the attack
    for step in ("scratch", "student"):
        fp = json.loads((run / step / "step.json").read_text())["fingerprint"]
        assert fp["adversarial.train_steps"] == 3 and fp["adversarial.train_eps"] == 0.1
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("kdflow")
    ev_run = client.search_runs([exp.experiment_id], filter_string="tags.`kdflow.step` = 'evaluate'")[0]
    for name in ("teacher", "scratch", "student"):
        assert f"{name}.pgd_accuracy" in ev_run.data.metrics and f"{name}.fgsm_accuracy" in ev_run.data.metrics
        assert ev_run.data.metrics[f"{name}.robustness_curve.pgd_accuracy_eps_0.2"] == pytest.approx(
            ev["models"][name]["robustness_curve"][-1]["pgd_accuracy"]
        )
    assert ev_run.data.metrics["robust_gain"] == pytest.approx(ev["robust_gain"])
    assert "evaluation/robustness.png" in {a.path for a in client.list_artifacts(ev_run.info.run_id, "evaluation")}


@pytest.fixture(scope="module")
def test_only_data(ard_run, tmp_path_factory) -> Path:
    """A prepared directory with the manifest and the test split only: no training image to read."""
    run = ard_run[0]
    d = tmp_path_factory.mktemp("test_only") / "data"
    d.mkdir()
    for f in ("manifest.json", "test.pt"):
        shutil.copy(run / "data" / f, d / f)
    return d


def test_data_free_distill_reads_no_training_image(ard_run, test_only_data, tmp_path):
    run = ard_run[0]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "dfad"
    teacher = str(run / "teacher" / "model.pt")
    proc = kdflow(
        "distill", "--profile", "smoke", "--data", str(test_only_data), "--teacher", teacher, "--out", str(out), *DFAD,
        env={"MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no training image read" in proc.stdout and "(no val split: not validated)" in proc.stdout
    assert sorted(p.name for p in test_only_data.iterdir()) == ["manifest.json", "test.pt"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_free"] and metrics["real_training_images_read"] == 0 and metrics["test_accuracy"] > 0.1
    assert metrics["generated_images"] == 10 * 6 * 128  # iterations x (5 student steps + 1 generator step) x batch
    for f in ("model.pt", "generator.pt", "generator_samples.png"):
        assert (out / f).stat().st_size > 0
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("kdflow")
    step = client.search_runs([exp.experiment_id], filter_string="tags.`kdflow.step` = 'distill_student'")[0]
    assert step.data.tags["kdflow.data_free"] == "true"
    logged = {a.path for a in client.list_artifacts(step.info.run_id, "generator")}
    assert logged == {"generator/generator.pt", "generator/generator_samples.png"}
    inputs = {d.dataset.name for d in step.inputs.dataset_inputs} if step.inputs else set()
    assert all("train" not in name for name in inputs), inputs  # the run records no training split as input

    # val is for reporting only: the same student with the full prepared directory (val present)
    full = tmp_path / "dfad_full"
    proc = kdflow(
        "distill", "--profile", "smoke", "--data", str(run / "data"), "--teacher", teacher, "--out", str(full), *DFAD,
        "--set", "tracking.enabled=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_model(str(out / "model.pt"))[0].state_dict()
    b = load_model(str(full / "model.pt"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "val_acc" in json.loads((full / "history.json").read_text())[-1]


def test_data_free_bad_input_is_one_line_and_writes_nothing(ard_run, test_only_data, tmp_path):
    run = ard_run[0]
    teacher = str(run / "teacher" / "model.pt")
    common = ["distill", "--profile", "smoke", "--data", str(test_only_data), "--teacher", teacher]
    cases = {
        "distill.generator.width=8192": "distill.generator: width 8192",
        "distill.features=[{kind: at, student_module: block1, teacher_module: block1}]": "feature loss",
    }
    for setting, words in cases.items():
        out = tmp_path / setting.split("=")[0]
        proc = kdflow(*common, "--out", str(out), *DFAD, "--set", setting, "--set", "tracking.enabled=false")
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert not out.exists() or not any(out.rglob("*.pt"))
    onnx = kdflow(
        "attack", "--profile", "smoke", "--data", str(run / "data"), "--model", str(tmp_path / "student.onnx"),
        "--out", str(tmp_path / "attack"),
    )  # fmt: skip
    assert onnx.returncode == 2 and "cannot be attacked" in onnx.stderr and not (tmp_path / "attack").exists()
    ok = kdflow(
        "attack", "--profile", "smoke", "--data", str(run / "data"), "--model", str(run / "student" / "model.pt"),
        "--out", str(tmp_path / "attack"), "--set", "adversarial.eps=0.05",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "attack" / "robustness.json").read_text())["robust_eps"] == 0.05


# The DAG's wiring for each method, on a third of the smoke profile's training images (the robust figures keep
# their 200 attacked test images)
WIRING = ["data.train_subset=2000", "data.val_size=500"]


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("ard", ["distill.method=ard"]),
        # the wiring, not the student: a quarter of the smoke profile's generator steps
        (
            "dfad",
            [
                "distill.method=dfad",
                "distill.data_free=true",
                "distill.generator.iterations=10",
                "distill.generator.iterations_per_epoch=5",
            ],
        ),
    ],
)
def test_pipeline_runs_each_method(method, overrides, tmp_path, monkeypatch):
    """The KFP DAG (local subprocess runner) with each method: its rows, robust exports, generator samples."""
    from pipelines.runner import run_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    summary = run_local(
        profile="smoke",
        root=str(tmp_path / "root"),
        overrides=[*overrides, *WIRING, "gate.max_latency_p95_ms=1000", "export.int8_min_agreement=0.9"],
    )
    ev, ex = summary["evaluation"], summary["export"]
    assert ev["method"] == method and "pgd_accuracy" in ev["models"]["student"]
    forms = ex["forms"]
    assert forms["torchscript"]["robust_attack"] == "white-box"
    assert forms["onnx"]["robust_attack"] == "transfer from the PyTorch twin"
    # the fp32 ONNX export computes the twin's logits: on the twin's own examples it scores what the twin does,
    # up to the few examples PGD left on a decision boundary, where float differences flip the class
    twin = ev["models"]["student"]["pgd_accuracy"]
    assert forms["onnx"]["pgd_accuracy"] == pytest.approx(twin, abs=0.03)
    assert forms["torchscript"]["pgd_accuracy"] == pytest.approx(twin, abs=0.03)
    report = Path(summary["report"]).read_text()
    label = {"ard": "| student (ARD) |", "dfad": "| student (data-free DFAD) |"}[method]
    assert label in report and "PGD-10 eps=0.1" in report
    if method == "dfad":
        assert "generator_samples.png" in report
        assert list(Path(summary["run_dir"]).rglob("generator_samples.png"))
    else:
        assert "| student (scratch, PGD-AT) |" in report
