"""Reuse across runs (storage.reuse): a model is taken only for exactly the fingerprint that trained it."""

from __future__ import annotations

import json
import os

import pytest
from helpers import tiny_config

from kdflow import steps
from kdflow.data import prepared as data
from kdflow.infra import reuse, running, step_manifest
from kdflow.infra.checkpoints import save_model
from kdflow.infra.io import sha256_file
from kdflow.models.zoo import build_model
from kdflow.steps.train import reuse_store


def _train(cfg, role, tiny_data, out, **kw):
    return steps.train(cfg, role, tiny_data, out, **kw)


@pytest.mark.integration
def test_same_inputs_reuse_the_model_other_inputs_train(tiny_data, tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    first = _train(cfg, "teacher", tiny_data, tmp_path / "run1")
    assert "reused_from" not in first and "trained:" in capsys.readouterr().out
    second = _train(cfg, "teacher", tiny_data, tmp_path / "run2")  # a new output dir: no checkpoint to resume
    assert second["reused_from"] == {"pipeline_run_id": first["pipeline_run_id"]}
    assert "reused (trained by pipeline run" in capsys.readouterr().out
    for name in ("model.pt", "model-best_val.pt", "metrics.json", "history.json"):
        assert (tmp_path / "run2" / name).read_bytes() == (tmp_path / "run1" / name).read_bytes(), name
    assert not (tmp_path / "run2" / "train_state").exists()  # nothing trained
    assert second["fingerprint"] == first["fingerprint"] and second["metrics"] == first["metrics"]

    changed = cfg.model_copy(deep=True)
    changed.teacher.lr = 0.05  # one field of the teacher's recipe: another fingerprint, trained
    assert "reused_from" not in _train(changed, "teacher", tiny_data, tmp_path / "run3")
    # a field of another role does not touch the teacher's fingerprint
    other_role = cfg.model_copy(deep=True)
    other_role.student.lr = 0.05
    assert "reused_from" in _train(other_role, "teacher", tiny_data, tmp_path / "run4")
    assert "reused_from" not in _train(cfg, "teacher", tiny_data, tmp_path / "run5", fresh=True)
    off = cfg.model_copy(deep=True)
    off.storage.reuse = False
    assert "reused_from" not in _train(off, "teacher", tiny_data, tmp_path / "run6")


@pytest.mark.integration
def test_changed_data_content_trains(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path)
    _train(cfg, "scratch", tiny_data, tmp_path / "a")
    window = tiny_config(tmp_path, data={"train_subset": 1400})  # another data window, same config otherwise
    prepared = tmp_path / "prepared-1400"
    data.prepare(window.data, prepared)
    assert data.load_manifest(prepared)["digest"] != data.load_manifest(tiny_data)["digest"]
    assert "reused_from" not in _train(window, "scratch", prepared, tmp_path / "b")


@pytest.mark.integration
def test_a_distilled_student_reuses_only_with_the_same_teacher_bytes(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path)
    teacher = tmp_path / "teacher"
    _train(cfg, "teacher", tiny_data, teacher)
    first = steps.distill(cfg, tiny_data, teacher / "model.pt", tmp_path / "s1")
    assert "reused_from" in steps.distill(cfg, tiny_data, teacher / "model.pt", tmp_path / "s2")
    other = tiny_config(tmp_path, train={"seed": 1})
    _train(other, "teacher", tiny_data, tmp_path / "teacher-seed1")  # another teacher, same config for the student
    again = steps.distill(cfg, tiny_data, tmp_path / "teacher-seed1" / "model.pt", tmp_path / "s3")
    assert (
        "reused_from" not in again and again["fingerprint"]["teacher_digest"] != first["fingerprint"]["teacher_digest"]
    )


@pytest.mark.parametrize("damage", ["altered", "missing", "index", "swapped"])
@pytest.mark.integration
def test_a_damaged_entry_is_quarantined_and_the_next_run_repairs_it(tiny_data, tmp_path, damage, capsys):
    cfg = tiny_config(tmp_path)
    store = reuse_store(cfg)
    first = _train(cfg, "scratch", tiny_data, tmp_path / "a")
    fp = first["fingerprint"]
    entry = reuse.entry_dir(store, "scratch", fp)
    assert reuse.lookup(store, "scratch", fp, "cnn-small") == entry
    if damage == "altered":
        (entry / "model.pt").write_bytes((entry / "model.pt").read_bytes()[:-8] + b"\0" * 8)
    elif damage == "missing":
        (entry / "metrics.json").unlink()
    elif damage == "index":  # an index naming another fingerprint (a key collision, another kdflow) is not this one
        index = json.loads((entry / reuse.INDEX).read_text())
        index["fingerprint"]["train.lr"] = 123.0
        (entry / reuse.INDEX).write_text(json.dumps(index))
    else:  # model file and index replaced consistently: another architecture, every sha256 right
        other = build_model("mlp", 10, 1, 28)
        save_model(other, "mlp", 10, 1, 28, entry / "model.pt", extra={"role": "scratch", "data_digest": "x"})
        index = json.loads((entry / reuse.INDEX).read_text())
        index["files"]["model.pt"] = sha256_file(entry / "model.pt")
        (entry / reuse.INDEX).write_text(json.dumps(index))
    capsys.readouterr()
    second = _train(cfg, "scratch", tiny_data, tmp_path / "b")
    assert "reused_from" not in second and "quarantined" in capsys.readouterr().out
    (quarantined,) = (store / reuse.QUARANTINE).iterdir()
    words = {"altered": "sha256", "missing": "missing", "index": "another fingerprint", "swapped": "architecture"}
    assert words[damage] in (quarantined / "REASON.txt").read_text()
    assert reuse.lookup(store, "scratch", fp, "cnn-small") == entry  # repaired: the retrained model, intact
    assert (entry / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def _entry(store, role: str, n: int, size: int, used: float):
    out = store.parent / f"out-{role}-{n}"
    fp = {"n": n, "data_digest": "d"}
    step_manifest.claim(out, "train_teacher", fp)
    (out / "model.pt").write_bytes(b"x" * size)
    step_manifest.complete(out)
    entry = reuse.publish(store, role, fp, out, {"pipeline_run_id": f"r{n}"})
    os.utime(entry / reuse.INDEX, (used, used))
    return entry


@pytest.mark.unit
def test_the_store_evicts_the_least_recently_used_entries_down_to_its_cap(tmp_path):
    store = tmp_path / "state" / "trained"
    old, mid, new = (_entry(store, "teacher", n, 1000, used) for n, used in ((1, 100.0), (2, 200.0), (3, 300.0)))
    evicted = reuse.gc(store, 2500, keep={old})
    assert [e.path for e in evicted] == [mid] and old.is_dir() and new.is_dir()
    assert [e.path for e in reuse.entries(store)] == [old, new]


@pytest.mark.unit
def test_store_ls_and_gc_from_the_cli(tmp_path, capsys):
    from kdflow.cli import main

    state = tmp_path / "state"
    _entry(state / "trained", "teacher", 1, 2_000_000, 100.0)
    _entry(state / "trained", "scratch", 2, 2_000_000, 200.0)
    common = ["--set", f"storage.state_dir={state}", "--set", "tracking.enabled=false"]
    assert main(["store", "ls", *common]) == 0
    listed = capsys.readouterr().out
    assert "2 entries, 4.0 MB" in listed and "| teacher |" in listed and "| r2 |" in listed
    assert main(["store", "gc", "--max-gb", "0.003", *common]) == 0
    out = capsys.readouterr().out
    assert "evicted teacher/" in out and "1 entries, 2.0 MB" in out
    kept = running.folder(state, "distill", "k" * 20) / "train_state"  # a killed step's kept checkpoint
    kept.mkdir(parents=True)
    (kept / "checkpoint.pt").write_bytes(b"x" * 1_000_000)
    assert main(["store", "ls", *common]) == 0
    assert "1 checkpoints kept by unfinished steps (1.0 MB)" in capsys.readouterr().out
    assert main(["store", "gc", "--max-gb", "0.003", *common]) == 0 and kept.is_dir()  # kept unless asked
    assert main(["store", "gc", "--max-gb", "0.003", "--purge-running", *common]) == 0
    assert "removed 1 checkpoints kept by unfinished steps" in capsys.readouterr().out and not kept.exists()
    with pytest.raises(SystemExit) as refused:  # argparse's own exit: usage, then one error line
        main(["store", "gc", "--max-gb", "-1", *common])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "argument --max-gb: must be a positive number of GB" in err


@pytest.mark.unit
def test_publish_takes_exactly_the_manifests_files_never_an_earlier_runs_snapshot(tmp_path):
    """An --out reused by another config (--fresh): the earlier teacher's snapshots are removed before the new
    run writes, and a file dropped in after the step finished is not published under its fingerprint."""
    out = tmp_path / "out"
    step_manifest.claim(out, "train_teacher", {"a": 1})
    for name in ("model.pt", "model-epoch2.pt", "model-best_val.pt"):
        (out / name).write_bytes(b"old teacher")
    step_manifest.complete(out)
    step_manifest.claim(out, "train_teacher", {"a": 2}, fresh=True)
    (out / "model.pt").write_bytes(b"new teacher")
    step_manifest.complete(out)
    (out / "model-epoch3.pt").write_bytes(b"dropped in later")
    entry = reuse.publish(tmp_path / "store", "teacher", {"a": 2}, out, {"pipeline_run_id": "r2"})
    assert sorted(p.name for p in entry.iterdir()) == ["entry.json", "model.pt"]
    assert (entry / "model.pt").read_bytes() == b"new teacher"


@pytest.mark.unit
def test_publish_keeps_the_first_entry_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    fp = {"a": 1}
    step_manifest.claim(out, "train_student_scratch", fp)
    (out / "model.pt").write_bytes(b"one")
    (out / "metrics.json").write_text("{}")
    (out / "unrelated.txt").write_text("not a training output")
    step_manifest.complete(out)
    entry = reuse.publish(tmp_path / "store", "scratch", fp, out, {"pipeline_run_id": "r1"})
    (out / "model.pt").write_bytes(b"two")
    assert reuse.publish(tmp_path / "store", "scratch", fp, out, {"pipeline_run_id": "r2"}) == entry
    assert (entry / "model.pt").read_bytes() == b"one" and reuse.source_of(entry) == {"pipeline_run_id": "r1"}
    assert sorted(p.name for p in entry.iterdir()) == ["entry.json", "metrics.json", "model.pt"]
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no staging dir left behind
    restored = tmp_path / "restored"
    assert reuse.restore(entry, restored) == ["metrics.json", "model.pt"]
    assert not list(restored.glob(".*"))


@pytest.mark.integration
def test_a_model_trained_on_augmented_views_is_not_reused_for_plain_ones(tiny_data, tmp_path):
    """Training reads the augmentation the data was prepared with (its manifest), not the config's
    data.augment: the same samples prepared without augmentation, trained under that config, must train."""
    plain = tiny_config(tmp_path, data={"augment": False})
    assert data.load_manifest(tiny_data)["augmentation"]["enabled"]  # the session's data: augmented
    first = _train(plain, "scratch", tiny_data, tmp_path / "augmented")  # config says plain, the data augments
    assert first["fingerprint"]["data_augmentation"]["enabled"]
    unaugmented = tmp_path / "prepared-plain"
    data.prepare(plain.data, unaugmented)
    assert data.load_manifest(unaugmented)["digest"] == data.load_manifest(tiny_data)["digest"]  # same samples
    second = _train(plain, "scratch", unaugmented, tmp_path / "plain")
    assert "reused_from" not in second and "data_augmentation" not in second["fingerprint"]
    # config and data agreeing (the usual case): the fingerprint has no extra field, as before this check
    assert "data_augmentation" not in _train(tiny_config(tmp_path), "scratch", tiny_data, tmp_path / "c")["fingerprint"]
