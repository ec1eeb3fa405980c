"""The whole DAG (KFP's local runner) on a user's own photos with a pretrained teacher (#26's "done when").

A folder of photos of mixed sizes, formats and modes, its pixels kept on disk and trained on RandomResizedCrops
of a larger stored image, a torchvision mobilenet_v3_small teacher started from an ImageNet-shaped weights
file (saved by the test from a fresh model: nothing is downloaded) and fine-tuned to the folder's classes,
distilled into cnn-small, evaluated, exported, gated and promoted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from test_imagefolder import _write_mixed_tree

from kdflow.infra.io import sha256_file

pytestmark = pytest.mark.e2e


def test_the_dag_on_a_photo_folder_with_a_pretrained_teacher(tmp_path, monkeypatch):
    from pipelines.runner import run_local

    _write_mixed_tree(tmp_path / "photos", per_class=12)
    torch.manual_seed(1)
    weights = tmp_path / "mobilenet_v3_small-imagenet.pth"
    torch.save(tvm.mobilenet_v3_small(num_classes=1000).state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    overrides = [
        "data.dataset=imagefolder",
        f"data.source={tmp_path / 'photos'}",
        "data.image_size=32",
        "data.store_size=40",
        "data.channels=3",
        "data.storage=disk",
        "data.train_crop=resized",
        "data.val_size=4",
        "data.release_fraction=0.2",
        "data.train_subset=null",
        "data.test_subset=null",
        "teacher.arch=tv:mobilenet_v3_small",
        f"teacher.weights={weights}",
        "teacher.finetune=full",
        "teacher.amp=off",
        "teacher.epochs=1",
        "student.epochs=1",
        "train.batch_size=8",
        "train.loader_workers=1",
        "gate.min_accuracy=0",
        "gate.min_retention=0",
        "gate.min_kd_gain=-1",
        "gate.max_latency_p95_ms=1000",
        "export.int8_min_agreement=0",
    ]
    out = run_local(profile="smoke", root=str(tmp_path / "root"), overrides=overrides)
    ev, ex, run_dir = out["evaluation"], out["export"], Path(out["run_dir"])
    assert set(ev["models"]) >= {"teacher", "student"} and ev["class_names"] == ["ant", "bee", "cow"]
    assert ex["parity_ok"] and {"onnx", "onnx_int8"} <= set(ex["forms"])
    assert out["promotion"]["promoted"] and out["promotion"]["reason"] == "first champion"
    (store,) = run_dir.rglob("pixels.u8")  # the prepared pixels on disk, read by the steps a batch at a time
    assert store.stat().st_size == (12 + 1) * 3 * 3 * 40 * 40  # every photo once (+ a CMYK one per class), 40 px
    manifests = [json.loads(p.read_text()) for p in run_dir.rglob("step-manifest.json")]
    (teacher,) = [m for m in manifests if m["step"] == "train_teacher"]
    assert teacher["fingerprint"]["teacher.weights_sha256"] == sha256_file(weights)  # the weights by content
    onnx_manifest = json.loads(next(run_dir.rglob("student.int8.onnx.manifest.json")).read_text())
    assert onnx_manifest["preprocess"] == {"resize_shorter": 40, "center_crop": 32}
