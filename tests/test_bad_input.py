"""Bad input: one table; each case is a one-line error naming the field, exit code 2, nothing half-written."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT

from kdflow import checkpoints, models
from kdflow.cli import main


class Evil:  # pickled code: weights_only loading must refuse it
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_data):
    d = tmp_path_factory.mktemp("bad")
    teacher = d / "teacher.pt"
    checkpoints.save_model(models.build_model("cnn-small"), "cnn-small", 10, 1, 28, teacher)
    five = d / "five.pt"
    checkpoints.save_model(models.build_model("cnn-small", num_classes=5), "cnn-small", 5, 1, 28, five)
    checkpoints.save_model(models.build_model("resnet18"), "resnet18", 10, 1, 28, d / "resnet18.pt")
    (d / "garbage.pt").write_bytes(b"not a checkpoint at all" * 10)
    torch.save({"state_dict": Evil()}, d / "evil.pt")
    idx = d / "idx_truncated"
    idx.mkdir()
    for f in Path("/usr/share/datasets/fashion-mnist").glob("*.gz"):
        shutil.copy(f, idx / f.name)
    raw = gzip.open(idx / "t10k-labels-idx1-ubyte.gz").read()
    with gzip.open(idx / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(raw[: len(raw) // 2])
    return {
        "tiny": str(tiny_data),
        "teacher": str(teacher),
        "five": str(five),
        "garbage": str(d / "garbage.pt"),
        "evil": str(d / "evil.pt"),
        "resnet18": str(d / "resnet18.pt"),
        "idx_truncated": str(idx),
    }


BASE = ["--set", "tracking.enabled=false", "--set", "train.epochs=1"]

CASES = [
    # (name, argv template, field named in the error)
    (
        "temperature<=0",
        ["distill", "--data", "{tiny}", "--teacher", "{teacher}", "--set", "distill.temperature=0"],
        "distill.temperature",
    ),
    (
        "alpha>1",
        ["distill", "--data", "{tiny}", "--teacher", "{teacher}", "--set", "distill.alpha=1.5"],
        "distill.alpha",
    ),
    (
        "alpha<0",
        ["distill", "--data", "{tiny}", "--teacher", "{teacher}", "--set", "distill.alpha=-0.1"],
        "distill.alpha",
    ),
    (
        "unknown model",
        ["distill", "--data", "{tiny}", "--teacher", "{teacher}", "--set", "student.arch=resnet9000"],
        "arch",
    ),
    (
        "unknown loss",
        ["distill", "--data", "{tiny}", "--teacher", "{teacher}", "--set", "distill.method=magic"],
        "distill.method",
    ),
    (
        "unknown feature loss",
        [
            "distill",
            "--data",
            "{tiny}",
            "--teacher",
            "{teacher}",
            "--set",
            "distill.features=[{kind: nope, student_module: block2, teacher_module: block2}]",
        ],
        "distill.features",
    ),
    ("unknown dataset", ["prep", "--set", "data.dataset=imagenet-9k"], "data.dataset"),
    ("class count mismatch", ["distill", "--data", "{tiny}", "--teacher", "{five}"], "teacher"),
    (
        "missing feature module",
        [
            "distill",
            "--data",
            "{tiny}",
            "--teacher",
            "{teacher}",
            "--set",
            "distill.features=[{kind: fitnets, student_module: nothere, teacher_module: block2}]",
        ],
        "distill.features",
    ),
    # student block2 is 7x7; torchvision resnet18's layer2 is 4x4 on 28x28 input: no integer ratio
    (
        "unbridgeable shapes",
        [
            "distill",
            "--data",
            "{tiny}",
            "--teacher",
            "{resnet18}",
            "--set",
            "distill.features=[{kind: fitnets, student_module: block2, teacher_module: layer2}]",
        ],
        "distill.features[0]",
    ),
    ("missing data directory", ["prep", "--set", "data.source=/nonexistent/fashion"], "data.source"),
    ("truncated IDX", ["prep", "--set", "data.source={idx_truncated}"], "data.source"),
    ("missing checkpoint", ["distill", "--data", "{tiny}", "--teacher", "/nonexistent/model.pt"], "teacher"),
    ("malformed checkpoint", ["distill", "--data", "{tiny}", "--teacher", "{garbage}"], "teacher"),
    ("pickled code", ["distill", "--data", "{tiny}", "--teacher", "{evil}"], "teacher"),
    ("unknown config key", ["prep", "--set", "distill.temprature=4"], "distill.temprature"),
    ("negative epochs", ["train-student", "--data", "{tiny}", "--set", "train.epochs=-1"], "train.epochs"),
    ("negative batch size", ["train-student", "--data", "{tiny}", "--set", "train.batch_size=-8"], "train.batch_size"),
    ("unknown profile", ["prep", "--profile", "nightly"], "--profile"),
]


def _fill(arg: str, inputs: dict) -> str:
    for k, v in inputs.items():
        arg = arg.replace("{" + k + "}", v)
    return arg


@pytest.mark.parametrize("name,argv,field", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, argv, field, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    filled = [_fill(a, inputs) for a in argv]
    args = [filled[0], *BASE, *filled[1:], "--out", str(out)]  # the case's own --set comes last and wins
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, f"{name}: exit {code}, stderr {err}"
    assert len(err) == 1 and err[0].startswith("kdflow: error: "), err
    assert field in err[0] and "fix:" in err[0], err[0]
    assert not (out / "model.pt").exists() and not (out / "student" / "model.pt").exists()
    leftovers = [p for p in out.rglob("*.tmp")] if out.exists() else []
    assert not leftovers


@pytest.mark.unit
def test_cli_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "kdflow.cli", "prep", "--out", str(tmp_path / "o"), "--set", "distill.temperature=-2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "kdflow: error: distill.temperature: must be > 0 (got -2.0); fix: set a positive temperature, e.g. distill.temperature=4"
    ]
