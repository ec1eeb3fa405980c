"""torch DDP on CPU (gloo) under torchrun: 2 processes against 1 at the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT

from kdflow.infra import checkpoints
from kdflow.models import zoo as models

pytestmark = pytest.mark.integration
COMMON = [
    "--set",
    "tracking.enabled=false",
    "--set",
    "train.epochs=2",
    "--set",
    "train.num_threads=1",
    "--set",
    "train.batch_size=64",
]


def _kdflow(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "kdflow.cli", *args, *COMMON], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, fashion_available):
    d = tmp_path_factory.mktemp("ddp")
    _kdflow(
        "prep",
        "--out",
        str(d / "data"),
        "--set",
        "data.train_subset=4000",
        "--set",
        "data.val_size=1000",
        "--set",
        "data.test_subset=2000",
    )
    return d


def test_two_processes_match_one_process(prepared):
    d = prepared
    elastic = set(Path(tempfile.gettempdir()).glob("torchelastic_*"))
    _kdflow("train-student", "--data", str(d / "data"), "--out", str(d / "one"))
    _kdflow("train-student", "--nproc", "2", "--data", str(d / "data"), "--out", str(d / "two"))
    assert set(Path(tempfile.gettempdir()).glob("torchelastic_*")) <= elastic  # torchrun's log folder went
    one = json.loads((d / "one" / "metrics.json").read_text())
    two = json.loads((d / "two" / "metrics.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["global_batch"] == one["global_batch"] == 64 and "global batch fixed" in two["lr_scaling_rule"]
    assert abs(one["test_accuracy"] - two["test_accuracy"]) < 0.04, (one["test_accuracy"], two["test_accuracy"])
    assert two["test_accuracy"] > 0.6
    # rank 0 alone wrote: one checkpoint, one history with one row per epoch
    assert len(json.loads((d / "two" / "history.json").read_text())) == 2


def test_distill_with_adapters_under_ddp(prepared, tmp_path):
    d = prepared
    teacher = tmp_path / "teacher.pt"
    checkpoints.save_model(models.build_model("cnn-wide"), "cnn-wide", 10, 1, 28, teacher)
    _kdflow(
        "distill",
        "--nproc",
        "2",
        "--data",
        str(d / "data"),
        "--teacher",
        str(teacher),
        "--out",
        str(tmp_path / "kd"),
        "--set",
        "distill.features=[{kind: fitnets, student_module: block2, teacher_module: block2, weight: 0.5}]",
    )
    m = json.loads((tmp_path / "kd" / "metrics.json").read_text())  # the distill step writes into --out
    assert m["world_size"] == 2 and m["test_accuracy"] > 0.3
