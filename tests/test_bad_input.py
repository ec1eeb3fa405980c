"""Bad input: one table; each case is a one-line error naming the field, exit code 2, nothing half-written."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT

from kdflow.cli import main
from kdflow.infra import checkpoints
from kdflow.models import zoo as models
from kdflow.release.export import export_onnx


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
    (d / "random.pt").write_bytes(bytes(range(256)) * 4)
    torch.save({"weights": torch.zeros(3)}, d / "foreign.pt")  # a torch file, but not a kdflow checkpoint
    torch.save({"state_dict": Evil()}, d / "evil.pt")
    export_onnx(models.build_model("cnn-small").eval(), (1, 28, 28), d / "teacher.onnx", 17)
    export_onnx(models.build_model("cnn-small", in_channels=3, image_size=32).eval(), (3, 32, 32), d / "rgb.onnx", 17)
    (d / "junk.onnx").write_bytes(b"not a protobuf")
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
        "random": str(d / "random.pt"),
        "foreign": str(d / "foreign.pt"),
        "resnet18": str(d / "resnet18.pt"),
        "idx_truncated": str(idx),
        **{f"{n}_onnx": str(d / f"{n}.onnx") for n in ("teacher", "rgb", "junk")},
    }


BASE = ["--set", "tracking.enabled=false", "--set", "train.epochs=1"]

CASES = [
    # (name, argv template, field named in the error)
    (
        "temperature infinite",
        ["distill", "--data", "{tiny}", "--teacher", "{teacher}", "--set", "distill.temperature=.inf"],
        "distill.temperature",
    ),
    ("lr not a number", ["train-student", "--data", "{tiny}", "--set", "train.lr=.nan"], "train.lr"),
    ("unknown student at prep", ["prep", "--set", "student.arch=resnet9000"], "student.arch"),
    ("unknown teacher at prep", ["prep", "--set", "teacher.arch=nothing"], "teacher.arch"),
    # the all-in-one command: refused before it prepares data or trains a teacher into --out
    (
        "run: unbridgeable shapes",
        [
            "run",
            "--teacher",
            "{resnet18}",
            "--set",
            "distill.features=[{kind: fitnets, student_module: block2, teacher_module: layer2}]",
        ],
        "distill.features[0]",
    ),
    (
        "run: missing feature module",
        ["run", "--set", "distill.features=[{kind: at, student_module: block2, teacher_module: nowhere}]"],
        "distill.features",
    ),
    ("run: pickled code", ["run", "--teacher", "{evil}"], "teacher"),
    ("run: garbage teacher", ["run", "--teacher", "{garbage}"], "teacher"),
    ("run: random bytes", ["run", "--teacher", "{random}"], "teacher"),
    ("run: foreign torch file", ["run", "--teacher", "{foreign}"], "teacher"),
    # an ONNX teacher by path: checked before the data is prepared (its file, its input, what a black box can't do)
    ("run: junk ONNX teacher", ["run", "--teacher", "{junk_onnx}"], "teacher"),
    ("run: ONNX teacher of another input", ["run", "--teacher", "{rgb_onnx}"], "teacher"),
    (
        "run: ONNX teacher with feature taps",
        [
            "run",
            "--teacher",
            "{teacher_onnx}",
            "--set",
            "distill.features=[{kind: at, student_module: block2, teacher_module: block2}]",
        ],
        "distill.features",
    ),
    (
        "run: ONNX teacher data-free",
        ["run", "--teacher", "{teacher_onnx}", "--set", "distill.data_free=true", "--set", "distill.method=dfad"],
        "distill.data_free",
    ),
    ("run: missing registry model", ["run", "--teacher", "models:/no-such-model@champion"], "teacher.source"),
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
    # refused from the config, before the teacher trains (a snapshot it never reaches was silently never saved)
    (
        "snapshot beyond the teacher's epochs",
        ["prep", "--set", "teacher.epochs=2", "--set", "teacher.snapshot_epochs=[5]"],
        "teacher.snapshot_epochs",
    ),
    ("DKD with mixing", ["prep", "--set", "train.mix=mixup", "--set", "distill.method=dkd"], "train.mix"),
]


def _fill(arg: str, inputs: dict) -> str:
    for k, v in inputs.items():
        arg = arg.replace("{" + k + "}", v)
    return arg


@pytest.fixture(autouse=True)
def _local_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # models:/ lookups stay here
    # and not at a server an earlier test of this xdist worker pointed MLflow's process-wide URI at (a Tracker
    # sets it) and then stopped: the lookup went there (refused, then about four minutes of MLflow retries)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    yield
    mlflow.set_tracking_uri(None)  # back to MLFLOW_TRACKING_URI, as in a new process


@pytest.mark.parametrize("name,argv,field", CASES, ids=[c[0] for c in CASES])
@pytest.mark.integration
def test_bad_input(name, argv, field, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    filled = [_fill(a, inputs) for a in argv]
    args = [filled[0], *BASE, *filled[1:], "--out", str(out)]  # the case's own --set comes last and wins
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, f"{name}: exit {code}, stderr {err}"
    assert len(err) == 1 and err[0].startswith("kdflow: error: "), err
    assert field in err[0] and "fix:" in err[0], err[0]
    assert not out.exists(), f"{name}: --out was written before the error: {sorted(out.rglob('*'))}"


@pytest.mark.unit
@pytest.mark.parametrize("nproc", ["0", "-2", "two"])
def test_nproc_below_one_is_refused_not_taken_as_one(nproc, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train-student", "--nproc", nproc, "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--nproc" in last and "fix: pass e.g. --nproc 2" in last and not (tmp_path / "o").exists()


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


@pytest.mark.parametrize("kind,said", [("random", "is not a readable checkpoint"), ("evil", "carries pickled code")])
@pytest.mark.integration
def test_checkpoint_errors_say_what_the_file_is(kind, said, inputs, tmp_path, capsys):
    """Random bytes were reported as "carries pickled code"."""
    argv = ["distill", *BASE, "--data", inputs["tiny"], "--teacher", inputs[kind], "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert said in capsys.readouterr().err


@pytest.mark.integration
def test_no_mlflow_dataset_warning_reaches_the_user(tiny_data, tmp_path):
    """MLflow warned "dataset source can be interpreted in multiple ways" in every step."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdflow.cli",
            "prep",
            "--out",
            str(tmp_path / "data"),
            "--set",
            "data.train_subset=500",
            "--set",
            "data.val_size=100",
            "--set",
            "data.test_subset=100",
            "--set",
            f"storage.state_dir={tmp_path}/state",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "interpreted in multiple ways" not in proc.stderr


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, inputs) -> dict[str, str]:
    """Files of every kind kdflow reads, damaged: TorchScript, ONNX, export manifests, images, a study database."""
    import json

    d = tmp_path_factory.mktemp("damaged")
    script = torch.jit.script(models.build_model("cnn-small"))
    good_ts = d / "good.torchscript.pt"
    script.save(str(good_ts))
    manifest = {
        "format": "torchscript",
        "input_shape": [1, 1, 28, 28],
        "normalization": {"mean": [0.286], "std": [0.353]},
        "class_names": [str(i) for i in range(10)],
    }

    def export(name: str, payload: bytes, manifest_text: str | None = None, fmt: str = "torchscript") -> str:
        (d / name).write_bytes(payload)
        (d / f"{name}.manifest.json").write_text(manifest_text or json.dumps({**manifest, "format": fmt}))
        return str(d / name)

    png = d / "digit.png"
    from PIL import Image

    Image.new("L", (28, 28), 128).save(png)
    (d / "truncated.png").write_bytes(png.read_bytes()[:40])
    (d / "text.png").write_text("not an image")
    (d / "a_dir.png").mkdir()
    tune = d / "tune"
    tune.mkdir()
    (tune / "study.json").write_text("{}")
    (tune / "study.db").write_bytes(b"garbage, not sqlite" * 100)
    (d / "a_file").write_text("x")
    unfinished, by_hand = d / "unfinished", d / "by_hand"
    for model_dir in (unfinished, by_hand):
        model_dir.mkdir()
        shutil.copy(inputs["teacher"], model_dir / "model.pt")
    (unfinished / "step-manifest.json").write_text('{"step": "distill_student", "status": "in_progress"}')
    return {
        "unfinished": str(unfinished),
        "by_hand": str(by_hand),
        **inputs,
        "png": str(png),
        "ts_good": export("good.torchscript.pt", good_ts.read_bytes()),
        "ts_truncated": export("truncated.torchscript.pt", good_ts.read_bytes()[:300]),
        "ts_garbage": export("garbage.torchscript.pt", b"\x00garbage" * 64),
        "onnx_garbage": export("garbage.onnx", b"not a protobuf" * 32, fmt="onnx"),
        "manifest_broken": export("broken.torchscript.pt", good_ts.read_bytes(), manifest_text="{not json"),
        "manifest_foreign": export("foreign.torchscript.pt", good_ts.read_bytes(), manifest_text="[1, 2, 3]"),
        "png_truncated": str(d / "truncated.png"),
        "png_text": str(d / "text.png"),
        "png_dir": str(d / "a_dir.png"),
        "dir": str(d),
        "tune": str(tune),
        "a_file": str(d / "a_file"),
    }


FILE_CASES = [
    # (name, argv, field named in the error)
    ("predict: truncated TorchScript", ["predict", "--model", "{ts_truncated}", "{png}"], "--model"),
    ("predict: TorchScript of garbage", ["predict", "--model", "{ts_garbage}", "{png}"], "--model"),
    ("predict: ONNX of garbage", ["predict", "--model", "{onnx_garbage}", "{png}"], "model"),
    ("predict: manifest not JSON", ["predict", "--model", "{manifest_broken}", "{png}"], "--model"),
    ("predict: manifest of another tool", ["predict", "--model", "{manifest_foreign}", "{png}"], "--model"),
    ("predict: a directory as the model", ["predict", "--model", "{dir}", "{png}"], "--model"),
    ("predict: truncated PNG", ["predict", "--model", "{manifest_foreign}", "{png_truncated}"], "--model"),
    ("predict: truncated PNG, good model", ["predict", "--model", "{ts_good}", "{png_truncated}"], "images"),
    ("predict: text named .png", ["predict", "--model", "{ts_good}", "{png_text}"], "images"),
    ("predict: a directory as an image", ["predict", "--model", "{ts_good}", "{png_dir}"], "images"),
    ("attack: truncated TorchScript", ["attack", "--data", "{tiny}", "--model", "{ts_truncated}"], "--model"),
    ("attack: directory as the model", ["attack", "--data", "{tiny}", "--model", "{dir}"], "--model"),
    ("tune: corrupt study database", ["tune", "--profile", "smoke", "--out", "{tune}"], "--out"),
    ("train: --out is a file", ["train-student", "--data", "{tiny}", "--out", "{a_file}"], "--out"),
    ("train: --out below a file", ["train-student", "--data", "{tiny}", "--out", "{a_file}/x"], "--out"),
    ("train: --data is a file", ["train-student", "--data", "{a_file}", "--out", "{dir}/never"], "--data"),
    ("evaluate: student never finished", ["evaluate", "--data", "{tiny}", "--teacher", "{by_hand}", "--student",
                                          "{unfinished}", "--out", "{dir}/never"], "--student"),
    ("evaluate: student made by hand", ["evaluate", "--data", "{tiny}", "--teacher", "{by_hand}", "--student",
                                        "{by_hand}", "--out", "{dir}/never"], "--student"),
]  # fmt: skip


@pytest.mark.parametrize("name,argv,field", FILE_CASES, ids=[c[0] for c in FILE_CASES])
@pytest.mark.integration
def test_damaged_files_of_every_kind_are_one_line(name, argv, field, damaged, tmp_path, capsys):
    """The classes of #25's damaged-file cases: one line naming the field, exit 2, no traceback, nothing written."""
    before = sorted(p.name for p in Path(damaged["dir"]).rglob("*"))
    filled = [_fill(a, damaged) for a in argv]
    if filled[0] == "attack":
        filled += ["--out", str(tmp_path / "attack")]
    if filled[0] not in ("predict",):
        filled[1:1] = BASE
    code = main(filled)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, f"{name}: exit {code}, stderr {err}"
    assert len(err) == 1 and err[0].startswith("kdflow: error: ") and field in err[0] and "fix:" in err[0], err
    assert sorted(p.name for p in Path(damaged["dir"]).rglob("*")) == before, f"{name} wrote beside its inputs"
    assert not (tmp_path / "attack").exists()


@pytest.mark.integration
def test_a_16_bit_png_is_read_on_the_8_bit_scale_and_palette_and_alpha_by_mode(tmp_path):
    """A 16-bit image read as if it were 8-bit is off by 257x (another class, exit 0): each mode converts."""
    import numpy as np
    from PIL import Image

    from kdflow.infra.loaders import read_image

    grey = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) % 256
    Image.fromarray(grey.astype(np.uint8), mode="L").save(tmp_path / "8.png")
    Image.fromarray((grey * 257).astype(np.uint16)).save(tmp_path / "16.png")  # the same picture, 16 bits
    eight, sixteen = read_image(tmp_path / "8.png", 1), read_image(tmp_path / "16.png", 1)
    assert Image.open(tmp_path / "16.png").mode.startswith("I") and sixteen.max() > 250
    np.testing.assert_allclose(sixteen, eight, atol=0.5)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent: white where it is composited
    rgba.save(tmp_path / "clear.png")
    assert read_image(tmp_path / "clear.png", 1).min() == 255.0
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png", 3)[:, 0, 0].tolist() == [10.0, 20.0, 30.0]
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert read_image(tmp_path / "cmyk.jpg", 3).shape == (3, 4, 4)


@pytest.mark.integration
def test_a_registry_teacher_behind_a_server_that_does_not_answer_fails_at_once(inputs, tmp_path, capsys):
    """MLflow's client retries a refused connection for about four minutes; kdflow asks the server first."""
    import socket

    import mlflow

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")  # the fixture puts it back
    out = tmp_path / "out"
    code = main(["run", *BASE, "--teacher", "models:/no-such-model@champion", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("kdflow: error: teacher.source: cannot fetch 'models:/no-such-model@champion'"), err[0]
    assert f"127.0.0.1:{port}" in err[0] and "unreachable" in err[0] and "fix:" in err[0], err[0]
    assert not out.exists()
