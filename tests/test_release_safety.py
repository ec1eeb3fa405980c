"""Release safety: no stale resume, no ungated promotion, no champion chosen by a hair (issue 14)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config

from kdflow import steps
from kdflow.cli import main
from kdflow.config import build_config
from kdflow.errors import ConfigError
from kdflow.evaluation.significance import mcnemar
from kdflow.infra import checkpoints
from kdflow.models import zoo as models
from kdflow.release.registry import judge


@pytest.mark.integration
def test_changed_config_never_resumes_old_weights(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "scratch"
    first = steps.train(cfg, "scratch", tiny_data, out)
    before = (out / "model.pt").read_bytes()
    changed = cfg.model_copy(deep=True)
    changed.train.lr = 0.05
    with pytest.raises(ConfigError, match=r"^--out: .*train.lr 0.1 -> 0.05.*fix: pass --fresh"):
        steps.train(changed, "scratch", tiny_data, out)
    longer = cfg.model_copy(deep=True)
    longer.student.epochs = 2  # more epochs would continue the old state under a new schedule
    with pytest.raises(ConfigError, match=r"student.epochs 1 -> 2"):
        steps.train(longer, "scratch", tiny_data, out)
    assert (out / "model.pt").read_bytes() == before  # nothing was overwritten
    again = steps.train(cfg, "scratch", tiny_data, out)  # the same fingerprint: reused, as before
    assert again["metrics"]["test_accuracy"] == first["metrics"]["test_accuracy"]
    fresh = steps.train(changed, "scratch", tiny_data, out, fresh=True)
    assert fresh["fingerprint"]["train.lr"] == 0.05 and (out / "model.pt").read_bytes() != before


@pytest.mark.integration
def test_cli_distill_refuses_a_checkpoint_of_another_temperature_or_teacher(tiny_data, tmp_path, capsys):
    torch.manual_seed(0)
    teachers = []
    for i in range(2):
        path = tmp_path / f"teacher{i}.pt"
        checkpoints.save_model(models.build_model("cnn-wide"), "cnn-wide", 10, 1, 28, path)
        teachers.append(str(path))
    out = tmp_path / "student"
    base = [
        "distill",
        "--data",
        str(tiny_data),
        "--out",
        str(out),
        "--set",
        "tracking.enabled=false",
        "--set",
        "train.epochs=1",
        "--set",
        f"storage.state_dir={tmp_path / 'state'}",  # its own model store: a reused model leaves no checkpoint
    ]
    assert main([*base, "--teacher", teachers[0]]) == 0
    weights = (out / "model.pt").read_bytes()
    capsys.readouterr()
    for extra, differs in (
        (["--teacher", teachers[0], "--set", "distill.temperature=1"], "distill.temperature 4.0 -> 1.0"),
        (["--teacher", teachers[1]], "teacher_digest"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kdflow: error: --out:") and differs in err[0], err
        assert (out / "model.pt").read_bytes() == weights
    assert main([*base, "--teacher", teachers[1], "--fresh"]) == 0
    assert json.loads((out / "step.json").read_text())["fingerprint"]["teacher_digest"] != ""


@pytest.fixture(scope="module")
def tracked(tiny_data, tmp_path_factory):
    """A distilled student logged to a real sqlite MLflow store, with a failed and an incomplete export."""
    tmp = tmp_path_factory.mktemp("release")
    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg = tiny_config(tmp, tracking={"enabled": True, "uri": uri}, gate={"max_latency_p95_ms": 1000.0})
    teacher = tmp / "teacher" / "model.pt"
    torch.manual_seed(0)
    checkpoints.save_model(models.build_model("cnn-wide"), "cnn-wide", 10, 1, 28, teacher)
    ctx = steps.RunContext("release-safety")
    steps.distill(cfg, tiny_data, teacher, tmp / "student", ctx)
    strict = cfg.model_copy(deep=True)
    strict.gate.min_accuracy = 0.99  # a 1-epoch student fails it
    steps.evaluate_models(strict, tiny_data, teacher.parent, None, tmp / "student", tmp / "eval", ctx)
    steps.export_student(strict, tiny_data, tmp / "student", tmp / "eval", tmp / "export-failed", ctx)
    steps.export_student(cfg, tiny_data, tmp / "student", None, tmp / "export-noeval", ctx)
    return {"tmp": tmp, "uri": uri, "cfg": cfg}


@pytest.fixture(scope="module")
def chain(tracked, tiny_data, tmp_path_factory):
    """Student A with a passing evaluation and export; student B (tracked too); a second prepared dataset."""
    from kdflow.data.prepared import prepare

    tmp = tracked["tmp"]
    lenient = tracked["cfg"].model_copy(deep=True)
    lenient.gate.min_accuracy, lenient.gate.min_retention = 0.0, 0.0  # a 1-epoch student passes: the chain
    lenient.gate.require_export_parity = False  # is under test, not the student
    ctx = steps.RunContext("release-chain")
    steps.evaluate_models(lenient, tiny_data, tmp / "teacher", None, tmp / "student", tmp / "eval-pass", ctx)
    steps.export_student(lenient, tiny_data, tmp / "student", tmp / "eval-pass", tmp / "export-pass", ctx)
    steps.train(tracked["cfg"], "scratch", tiny_data, tmp / "other", ctx)
    other_data = tmp_path_factory.mktemp("other_data")
    prepare(tiny_config(other_data, data={"train_subset": 1400}).data, other_data / "prepared")
    return {**tracked, "cfg": lenient, "other_data": other_data / "prepared"}


def _promote_args(data, student, export, out, state) -> list[str]:
    return [
        "promote", "--data", str(data), "--student", str(student), "--export", str(export), "--out", str(out),
        "--set", "gate.min_accuracy=0", "--set", "gate.min_retention=0", "--set", f"storage.state_dir={state}",
    ]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("force", [False, True])
def test_a_gate_cannot_be_borrowed_from_another_students_export(chain, tiny_data, tmp_path, capsys, monkeypatch, force):
    """`promote --student B --export <A's passing export>` promoted B (even untrained) as the first champion."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain["uri"])
    tmp = chain["tmp"]
    args = _promote_args(tiny_data, tmp / "other", tmp / "export-pass", tmp_path / "p", tmp / "state")
    capsys.readouterr()
    assert main([*args, *(["--force"] if force else [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdflow: error: --export:") and "another student" in err[0], err
    assert not [m for m in MlflowClient(chain["uri"]).search_registered_models() if m.name == "kd-student"]
    assert not (tmp_path / "p").exists()


@pytest.mark.integration
def test_promote_refuses_an_export_judged_on_other_data(chain, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain["uri"])
    tmp = chain["tmp"]
    args = _promote_args(chain["other_data"], tmp / "student", tmp / "export-pass", tmp_path / "p", tmp / "state")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdflow: error: --export:") and "other data" in err[0], err


@pytest.mark.integration
def test_export_refuses_another_students_evaluation_before_writing(chain, tiny_data, tmp_path):
    from kdflow.errors import CheckpointError

    tmp, out = chain["tmp"], tmp_path / "export"
    with pytest.raises(CheckpointError, match="--evaluation: .* is of another student"):
        steps.export_student(chain["cfg"], tiny_data, tmp / "other", tmp / "eval-pass", out)
    assert not out.exists() or not any(out.iterdir())
    # the student's own evaluation and export bind it: promote accepts the chain
    exported = json.loads((tmp / "export-pass" / "export.json").read_text())
    evaluation = json.loads((tmp / "eval-pass" / "evaluation.json").read_text())
    assert exported["student_sha256"] == evaluation["student_sha256"] and exported["gate"]["passed"]


@pytest.mark.integration
def test_export_without_evaluation_records_an_incomplete_gate(tracked):
    exported = json.loads((tracked["tmp"] / "export-noeval" / "export.json").read_text())
    assert exported["gate"]["passed"] is False and exported["gate"]["complete"] is False
    assert exported["gate"]["checks"]["evaluation"]["passed"] is False


@pytest.mark.parametrize(
    "export_dir,verdict", [("export-failed", "release_accuracy: 0."), ("export-noeval", "INCOMPLETE")]
)
@pytest.mark.integration
def test_promote_enforces_the_recorded_gate(tracked, tiny_data, tmp_path, capsys, monkeypatch, export_dir, verdict):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    tmp = tracked["tmp"]
    args = [
        "promote",
        "--data",
        str(tiny_data),
        "--student",
        str(tmp / "student"),
        "--export",
        str(tmp / export_dir),
        "--out",
        str(tmp_path / "p"),
        "--set",
        f"storage.state_dir={tmp}/state",
    ]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdflow: error: gate:") and verdict in err[0], err
    client = MlflowClient(tracked["uri"])
    assert not [m for m in client.search_registered_models() if m.name == "kd-student"]  # nothing registered


@pytest.mark.integration
def test_force_promotes_and_is_recorded(tracked, tiny_data, tmp_path):
    from mlflow.tracking import MlflowClient

    tmp, cfg = tracked["tmp"], tracked["cfg"].model_copy(deep=True)
    cfg.tracking.registered_model = "kd-student-forced"
    decision = steps.promote(cfg, tiny_data, tmp / "student", tmp / "export-failed", tmp_path / "p", None, force=True)
    assert decision["promoted"] is True and decision["forced"] is True and decision["split"] == "release"
    client = MlflowClient(tracked["uri"])
    version = client.get_model_version_by_alias("kd-student-forced", "champion")
    assert version.tags["kdflow.forced"].startswith("true")
    runs = client.search_runs(
        [client.get_experiment_by_name("kdflow").experiment_id],
        filter_string="tags.`kdflow.step` = 'register_and_promote'",
    )
    assert any(r.data.tags.get("kdflow.forced") == "true" for r in runs)


@pytest.mark.integration
def test_promote_of_an_untracked_student_is_one_line(tiny_data, tracked, tmp_path, capsys, monkeypatch):
    """It used to die with a KeyError traceback."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    cfg = tiny_config(tmp_path)
    steps.train(cfg, "scratch", tiny_data, tmp_path / "untracked")
    args = [
        "promote",
        "--data",
        str(tiny_data),
        "--student",
        str(tmp_path / "untracked"),
        "--export",
        str(tracked["tmp"] / "export-failed"),
        "--out",
        str(tmp_path / "p"),
        "--force",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdflow: error: --student:") and "tracking" in err[0], err


def _correct(n: int, wrong: list[int]) -> torch.Tensor:
    c = torch.ones(n, dtype=torch.bool)
    c[wrong] = False
    return c


@pytest.mark.unit
def test_a_one_image_win_is_not_a_win():
    g = build_config({}).gate
    champion = _correct(1000, list(range(100)))  # 90.0%
    challenger = _correct(1000, list(range(1, 100)))  # 90.1%: one more image right
    verdict = judge(challenger, champion, g)
    assert not verdict["wins"] and verdict["p_value"] == pytest.approx(0.5)
    clearly = _correct(1000, list(range(60)))  # 94.0%: right on 40 more images, wrong on none more
    assert judge(clearly, champion, g)["wins"]
    strict = build_config({"gate": {"min_improvement": 0.05}}).gate  # 4 pt is under a 5 pt margin
    assert not judge(clearly, champion, strict)["wins"]


@pytest.mark.unit
def test_mcnemar_matches_the_binomial_tail():
    """Checked against the exact one-sided binomial tail written out independently."""
    from math import comb

    a = _correct(200, list(range(0, 30)))  # wrong on 0..29
    b = _correct(200, list(range(20, 40)))  # wrong on 20..39
    test = mcnemar(b, a)  # b right where a wrong: 0..19 (20); a right where b wrong: 30..39 (10)
    assert (test["challenger_only_correct"], test["champion_only_correct"]) == (20, 10)
    tail = sum(comb(30, k) for k in range(20, 31)) / 2**30
    assert test["p_value"] == pytest.approx(tail, rel=1e-9)


@pytest.mark.integration
def test_promote_against_another_tracking_server_is_one_line(chain, tiny_data, tmp_path, capsys, monkeypatch):
    """The student's run and model live on the server that trained it; another server does not know them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other-server.db")
    tmp = chain["tmp"]
    args = _promote_args(tiny_data, tmp / "student", tmp / "export-pass", tmp_path / "p", tmp / "state")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--student" in err[0] and "unknown to the tracking server" in err[0], err
    assert not (tmp_path / "p").exists()


@pytest.mark.integration
def test_promote_refuses_a_student_changed_after_it_finished(chain, tiny_data, tmp_path, capsys, monkeypatch):
    """The chain is checked file by file: a student whose model.pt was replaced after its step completed."""
    import shutil

    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain["uri"])
    tmp = chain["tmp"]
    copy = tmp_path / "student"
    shutil.copytree(tmp / "student", copy)
    (copy / "metrics.json").write_text("{}")
    args = _promote_args(tiny_data, copy, tmp / "export-pass", tmp_path / "p", tmp / "state")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--student" in err[0] and "changed since the step finished" in err[0], err


@pytest.mark.integration
def test_promote_refuses_data_without_a_release_split(chain, tiny_data, tmp_path, capsys, monkeypatch):
    """Promotion judges only on the release split: data prepared by hand (or by an earlier kdflow) without
    one is refused before anything is registered, never judged on val instead."""
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain["uri"])
    by_hand = tmp_path / "data"
    by_hand.mkdir()
    for f in ("train.pt", "val.pt", "test.pt"):
        shutil.copy(tiny_data / f, by_hand / f)
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    del manifest["counts"]["release"]
    (by_hand / "manifest.json").write_text(json.dumps(manifest))  # same digest: only the release split is gone
    tmp = chain["tmp"]
    args = _promote_args(by_hand, tmp / "student", tmp / "export-pass", tmp_path / "p", tmp / "state")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdflow: error: data.release_fraction:") and "no release split" in err[0]
    assert not (tmp_path / "p").exists()
    assert not [m for m in MlflowClient(chain["uri"]).search_registered_models() if m.name == "kd-student"]
