"""Registry paths on a real sqlite MLflow store: models:/ teachers, ONNX promotion, weights-only loading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

from kdflow import steps
from kdflow.data import prepared as data
from kdflow.infra import checkpoints
from kdflow.release.registry import accuracy_of_registered

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    cfg = tiny_config(
        tmp,
        tracking={"enabled": True, "uri": f"sqlite:///{tmp}/mlflow.db"},
        teacher={"epochs": 2},
        student={"epochs": 2},
    )
    ctx = steps.RunContext("registry-test")
    teacher = steps.provide_teacher(cfg, tiny_data, tmp / "teacher", ctx)
    return {"cfg": cfg, "tmp": tmp, "teacher": teacher, "ctx": ctx}


def test_teacher_from_registry_alias_loads_weights_only(trained, tiny_data, tmp_path):
    cfg = trained["cfg"].model_copy(deep=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    client.set_registered_model_alias("kd-teacher", "champion", trained["teacher"]["registered_version"])
    cfg.teacher.source = "models:/kd-teacher@champion"
    info = steps.provide_teacher(cfg, tiny_data, tmp_path / "t", steps.RunContext("registry-test-2"))
    assert info["source"] == "models:/kd-teacher@champion"
    a = checkpoints.load_model(trained["tmp"] / "teacher" / "model.pt")[0].state_dict()
    b = checkpoints.load_model(tmp_path / "t" / "model.pt")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a process that fetched a registered model leaves no copy of it behind when it exits (MLflow's default
    # destination, a new folder in /tmp per download, stayed forever)
    fetch = (
        "from kdflow.infra.model_uris import resolve_model_uri;print(resolve_model_uri('models:/kd-teacher@champion'))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.tracking.uri}
    done = subprocess.run([sys.executable, "-c", fetch], env=env, capture_output=True, text=True, timeout=120)
    fetched = Path(done.stdout.strip())
    assert done.returncode == 0 and fetched.name == "model.pt", done.stderr[-2000:]
    assert "kdflow-models-" in str(fetched) and not fetched.exists()


@pytest.fixture(scope="module")
def int8_champion(trained, tiny_data, tmp_path_factory):
    """A distilled student exported and promoted as int8 ONNX: the champion the tests below read."""
    tmp = tmp_path_factory.mktemp("int8")
    cfg = trained["cfg"].model_copy(deep=True)
    cfg.export.promote_format = "onnx_int8"
    cfg.tracking.registered_model = "kd-student-int8"
    ctx = steps.RunContext("registry-test-3")
    steps.distill(cfg, tiny_data, trained["tmp"] / "teacher" / "model.pt", tmp / "student", ctx)
    exported = steps.export_student(cfg, tiny_data, tmp / "student", None, tmp / "export", ctx)
    # no evaluation here, so the gate is incomplete: promoted with --force (the registry path is under test)
    decision = steps.promote(cfg, tiny_data, tmp / "student", tmp / "export", tmp / "promo", ctx, force=True)
    return {"exported": exported, "decision": decision}


def test_onnx_int8_promotion(int8_champion, tiny_data):
    decision, exported = int8_champion["decision"], int8_champion["exported"]
    assert decision["promoted"] is True and decision["reason"] == "first champion"
    # the champion is the int8 ONNX model, run by onnxruntime: its reported test accuracy is export's
    assert decision["challenger_test_accuracy"] == pytest.approx(exported["forms"]["onnx_int8"]["accuracy"], abs=1e-6)
    prepared = data.load_prepared(tiny_data)
    assert accuracy_of_registered("kd-student-int8", decision["version"], prepared, "release") == pytest.approx(
        decision["challenger_accuracy"]  # judged on the release split
    )


def test_predict_from_registered_onnx_model(trained, int8_champion, tiny_data, tmp_path, monkeypatch, capsys):
    """`kdflow predict --model models:/NAME@champion` on real Fashion-MNIST PNGs (the champion is the int8
    ONNX model the int8_champion fixture registered, whatever order the tests run in)."""
    import json

    from PIL import Image

    from kdflow.cli import main

    cfg = trained["cfg"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
    d = data.load_prepared(tiny_data)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(d.test.x[i, 0].numpy()).save(p)
        paths.append(str(p))
    assert main(["predict", "--model", "models:/kd-student-int8@champion", "--json", *paths]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["class"] in d.class_names for r in rows)
