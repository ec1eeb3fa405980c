"""A teacher that exists only as an ONNX file (#26): black-box logit distillation, online and cached.

The ONNX files come from kdflow's own export of a teacher trained here; nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from helpers import tiny_config

from kdflow import steps
from kdflow.cli import main
from kdflow.data import prepared as data
from kdflow.errors import CheckpointError, ConfigError, ModelError
from kdflow.infra import checkpoints
from kdflow.infra.onnx_file import load_onnx_teacher
from kdflow.release.export import export_onnx


@pytest.fixture(scope="module")
def onnx_files(tiny_data, tmp_path_factory):
    """A 1-epoch cnn-wide teacher, exported by kdflow as logits and (with a softmax on top) as probabilities."""
    tmp = tmp_path_factory.mktemp("onnx_teacher")
    cfg = tiny_config(tmp, teacher={"lr": 0.02})
    steps.train(cfg, "teacher", tiny_data, tmp / "torch-teacher")
    model, _ = checkpoints.load_model(tmp / "torch-teacher" / "model.pt")
    export_onnx(model, (1, 28, 28), tmp / "teacher.onnx", 17)
    export_onnx(nn.Sequential(model, nn.Softmax(1)).eval(), (1, 28, 28), tmp / "probs.onnx", 17)
    return {"tmp": tmp, "cfg": cfg, "model": model}


@pytest.mark.integration
def test_the_onnx_teacher_answers_as_the_pytorch_teacher(onnx_files, tiny_data):
    prepared = data.load_prepared(tiny_data)
    x = prepared.normalizer()(prepared.val.x[:64])
    with torch.no_grad():
        reference = onnx_files["model"](x)
    logits = load_onnx_teacher(onnx_files["tmp"] / "teacher.onnx", 10, (1, 28, 28), "teacher.source")
    assert not bool(logits.outputs_probabilities)
    assert torch.allclose(logits(x), reference, atol=1e-4)
    probs = load_onnx_teacher(onnx_files["tmp"] / "probs.onnx", 10, (1, 28, 28), "teacher.source")
    assert bool(probs.outputs_probabilities)  # found on load, so soft targets are right at any temperature
    for t in (1.0, 4.0):
        assert torch.allclose(torch.softmax(probs(x) / t, 1), torch.softmax(reference / t, 1), atol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("cache", [False, True])
def test_an_onnx_teacher_is_distilled_online_and_cached(onnx_files, tiny_data, tmp_path, cache):
    """teacher.source: teacher.onnx -> the teacher step -> distill (live or through the offline cache) -> evaluate."""
    cfg = onnx_files["cfg"].model_copy(deep=True)
    cfg.teacher.source = str(onnx_files["tmp"] / "teacher.onnx")
    cfg.distill.cache = cache
    taken = steps.provide_teacher(cfg, tiny_data, tmp_path / "teacher")
    assert taken["arch"] == "onnx"
    torch_acc = json.loads((onnx_files["tmp"] / "torch-teacher" / "metrics.json").read_text())["test_accuracy"]
    assert taken["metrics"]["test_accuracy"] == pytest.approx(torch_acc, abs=0.004)  # the same teacher, via ORT
    student = steps.distill(cfg, tiny_data, tmp_path / "teacher" / "model.pt", tmp_path / "student")
    twin = steps.distill(cfg, tiny_data, onnx_files["tmp"] / "torch-teacher" / "model.pt", tmp_path / "twin")
    assert student is not None and twin is not None  # the same teacher as ONNX and PyTorch: the same student
    assert student["metrics"]["test_accuracy"] == pytest.approx(twin["metrics"]["test_accuracy"], abs=0.01)
    summary = steps.evaluate_models(cfg, tiny_data, tmp_path / "teacher", None, tmp_path / "student", tmp_path / "eval")
    assert summary["models"]["teacher"]["accuracy"] == pytest.approx(torch_acc, abs=0.004)
    assert 0 <= summary["models"]["student"]["agreement_with_teacher"] <= 1
    assert "pgd_accuracy" not in summary["models"]["teacher"]  # a black box is not attacked (no gradients)


@pytest.mark.integration
def test_what_a_black_box_cannot_do_is_refused_in_one_line(onnx_files, tiny_data, tmp_path, capsys):
    cfg = onnx_files["cfg"].model_copy(deep=True)
    cfg.teacher.source = str(onnx_files["tmp"] / "teacher.onnx")
    steps.provide_teacher(cfg, tiny_data, tmp_path / "teacher")
    teacher = tmp_path / "teacher" / "model.pt"
    features = cfg.model_copy(deep=True)
    features.distill.features = [{"kind": "at", "student_module": "block2", "teacher_module": "block2"}]  # type: ignore[list-item]
    features = type(cfg).model_validate(features.to_dict())
    with pytest.raises(ConfigError, match=r"^distill.features: an ONNX teacher is a black box"):
        steps.distill(features, tiny_data, teacher, tmp_path / "s1")
    raw = cfg.to_dict()
    raw["distill"].update(data_free=True, method="dfad")
    free = type(cfg).model_validate(raw)
    with pytest.raises(ConfigError, match=r"^distill.data_free: .*no gradients"):
        steps.distill(free, tiny_data, teacher, tmp_path / "s2")
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    args = [
        "distill",
        "--data",
        str(tiny_data),
        "--teacher",
        str(tmp_path / "junk.onnx"),
        "--out",
        str(tmp_path / "s3"),
    ]
    args += ["--set", "tracking.enabled=false", "--set", f"storage.state_dir={tmp_path / 'st'}"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdflow: error: teacher:") and "not a valid ONNX model" in err[0], err
    assert not (tmp_path / "s3").exists()
    # `kdflow train-teacher` takes teacher.source as the DAG's teacher step does (it trained one instead)
    args = ["train-teacher", "--data", str(tiny_data), "--out", str(tmp_path / "t3"), "--set", "tracking.enabled=false"]
    args += ["--set", f"teacher.source={onnx_files['tmp'] / 'teacher.onnx'}", "--set", f"storage.state_dir={tmp_path}"]
    assert main(args) == 0
    assert checkpoints.load_model(tmp_path / "t3" / "model.pt")[1]["arch"] == "onnx"


@pytest.mark.unit
def test_an_onnx_file_of_another_shape_or_label_set_is_one_line(tmp_path):
    torch.manual_seed(0)
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    export_onnx(rgb, (3, 16, 16), tmp_path / "rgb.onnx", 17)
    with pytest.raises(
        ModelError, match=r"^teacher.source: .*takes input \['batch', 3, 16, 16\], the data is N x 1 x 16 x 16"
    ):
        load_onnx_teacher(tmp_path / "rgb.onnx", 10, (1, 16, 16), "teacher.source")
    with pytest.raises(ModelError, match=r"outputs \(4, 10\), the data has 5 classes"):
        load_onnx_teacher(tmp_path / "rgb.onnx", 5, (3, 16, 16), "teacher.source")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_onnx_teacher(tmp_path / "absent.onnx", 10, (3, 16, 16), "teacher.source")


@pytest.mark.unit
def test_a_fixed_batch_onnx_model_runs_in_chunks(tmp_path):
    """An export with batch size 1 baked in still scores a batch of 5 (run one by one, none padded into it)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    torch.onnx.export(net, (torch.zeros(1, 1, 4, 4),), str(tmp_path / "fixed.onnx"), dynamo=False, opset_version=17)
    teacher = load_onnx_teacher(tmp_path / "fixed.onnx", 3, (1, 4, 4), "teacher.source")
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        assert torch.allclose(teacher(x), net(x), atol=1e-5)
    # the bytes travel in an ordinary kdflow checkpoint, loadable with weights_only=True
    checkpoints.save_model(teacher, "onnx", 3, 1, 4, tmp_path / "model.pt")
    loaded, meta = checkpoints.load_model(tmp_path / "model.pt")
    assert meta["arch"] == "onnx" and torch.allclose(loaded(x), net(x), atol=1e-5)


@pytest.mark.integration
def test_kdflow_run_takes_an_onnx_teacher_by_path(onnx_files, tiny_data, tmp_path):
    """`kdflow run --teacher teacher.onnx`: distil and evaluate read the same teacher file, so evaluate's check that
    it taught the student passes (the ONNX file re-saved after distillation would not be that file)."""
    out = tmp_path / "run"
    args = ["run", "--data", str(tiny_data), "--teacher", str(onnx_files["tmp"] / "teacher.onnx"), "--out", str(out)]
    args += ["--set", "tracking.enabled=false", "--set", f"storage.state_dir={tmp_path / 'st'}"]
    args += ["--set", "student.epochs=1"]
    assert main(args) == 0
    assert checkpoints.load_model(out / "teacher_given" / "model.pt")[1]["arch"] == "onnx"
    summary = json.loads((out / "evaluation" / "evaluation.json").read_text())
    torch_acc = json.loads((onnx_files["tmp"] / "torch-teacher" / "metrics.json").read_text())["test_accuracy"]
    assert summary["models"]["teacher"]["accuracy"] == pytest.approx(torch_acc, abs=0.004)
    # the same command again: the saved teacher has the same bytes, so the student is reused, not retrained
    student = (out / "student" / "model.pt").read_bytes()
    assert main(args) == 0
    assert (out / "student" / "model.pt").read_bytes() == student
    assert json.loads((out / "student" / "step.json").read_text())["started"]["how"] == "reused"


@pytest.mark.integration
def test_an_onnx_extra_teacher_joins_the_ensemble_of_kdflow_run(onnx_files, tiny_data, tmp_path):
    """`distill.extra_teachers` may name an ONNX file: `kdflow run` checks it as one (not as a torch checkpoint)."""
    out, onnx = tmp_path / "run", onnx_files["tmp"] / "teacher.onnx"
    args = ["run", "--data", str(tiny_data), "--teacher", str(onnx_files["tmp"] / "torch-teacher" / "model.pt")]
    args += ["--out", str(out), "--set", "tracking.enabled=false", "--set", f"storage.state_dir={tmp_path / 'st'}"]
    args += ["--set", "student.epochs=1", "--set", f"distill.extra_teachers=[{{arch: onnx, source: {onnx}}}]"]
    assert main(args) == 0
    manifest = json.loads((out / "student" / "step-manifest.json").read_text())
    assert len(manifest["inputs"]["teacher_sha256"].split(",")) == 2


@pytest.mark.integration
def test_the_teacher_step_of_the_file_a_student_learnt_from_is_its_teacher(onnx_files, tiny_data, tmp_path):
    """Step by step: `kdflow distill --teacher x.onnx`, then `kdflow train-teacher --set teacher.source=x.onnx`
    (the DAG's teacher step) for evaluate. The step's checkpoint wraps the file's bytes, so its own sha256 differs
    from the one distill recorded; evaluate accepts it by the source sha256 the step recorded, and only that."""
    cfg = onnx_files["cfg"].model_copy(deep=True)
    onnx = onnx_files["tmp"] / "teacher.onnx"
    assert steps.distill(cfg, tiny_data, onnx, tmp_path / "student") is not None
    cfg.teacher.source = str(onnx)
    steps.provide_teacher(cfg, tiny_data, tmp_path / "teacher")
    summary = steps.evaluate_models(cfg, tiny_data, tmp_path / "teacher", None, tmp_path / "student", tmp_path / "e")
    assert 0 <= summary["models"]["student"]["agreement_with_teacher"] <= 1
    other = cfg.model_copy(deep=True)  # a teacher step of another file is still refused
    other.teacher.source = str(onnx_files["tmp"] / "probs.onnx")
    steps.provide_teacher(other, tiny_data, tmp_path / "other")
    with pytest.raises(ConfigError, match=r"^--teacher: .* is not the teacher the student"):
        steps.evaluate_models(cfg, tiny_data, tmp_path / "other", None, tmp_path / "student", tmp_path / "e2")
    assert not (tmp_path / "e2").exists()
