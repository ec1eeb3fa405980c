"""Ensembles of teachers (``distill.extra_teachers``): with ``distill.cache`` a cache file per teacher over the same
views, every teacher's logits read at each step, combined as the live teachers are (the step and the tune); the
evaluate step compares the student with the ensemble that taught it."""

from __future__ import annotations

import optuna
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config, view_batch

from kdflow.data import cache
from kdflow.data import prepared as data
from kdflow.data.ensemble_cache import EnsembleCache, get_or_build_all
from kdflow.errors import ConfigError
from kdflow.infra import checkpoints
from kdflow.infra.io import sha256_file
from kdflow.models import zoo as models

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two teachers that disagree (cnn-wide from two seeds, untrained: only the plumbing is under test)."""
    tmp = tmp_path_factory.mktemp("ensemble")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = models.build_model("cnn-wide").eval()
        path = tmp / f"teacher-{seed}.pt"
        checkpoints.save_model(model, "cnn-wide", 10, 1, 28, path)
        out.append((model, path, sha256_file(path)))
    return out


def test_each_teacher_serves_its_own_logits_on_the_view_all_of_them_saw(teachers, tiny_data, tmp_path):
    d = data.load_prepared(tiny_data)
    (t0, _, sha0), (t1, _, sha1) = teachers
    alone, alone_path, _ = cache.get_or_build(t0, sha0, d, 2, 5, tmp_path)  # a single-teacher run's cache
    before = alone_path.stat().st_mtime_ns
    ec, paths, reused = get_or_build_all([t0, t1], [sha0, sha1], d, 2, 5, tmp_path)
    assert isinstance(ec, EnsembleCache) and len(ec.members) == 2 and not reused
    assert paths[0] == alone_path and alone_path.stat().st_mtime_ns == before  # the first teacher's file reused
    assert ec.bytes_per_view() == 2 * alone.bytes_per_view() and ec.views == 2
    for epoch in (0, 1, 2):  # epoch 2 wraps to view 0
        xb, _, idx = view_batch(d, ec, epoch)
        got = ec.teacher_logits(idx, epoch)
        with torch.no_grad():
            live = [t0(xb), t1(xb)]
        assert len(got) == 2 and all(torch.allclose(g, v, atol=2e-2, rtol=1e-2) for g, v in zip(got, live, strict=True))
        assert not torch.allclose(got[0], got[1], atol=0.1)  # two teachers, not one read twice
    assert get_or_build_all([t0, t1], [sha0, sha1], d, 2, 5, tmp_path)[2]  # both files reused the second time
    one, _, _ = get_or_build_all([t0], [sha0], d, 2, 5, tmp_path)  # one teacher: its plain cache
    assert isinstance(one, cache.TeacherCache) and len(one.teacher_logits(idx, 0)) == 1


def test_members_over_other_views_are_refused(teachers, tiny_data, tmp_path):
    d = data.load_prepared(tiny_data)
    (t0, _, sha0), (t1, _, sha1) = teachers
    a, _, _ = cache.get_or_build(t0, sha0, d, 2, 5, tmp_path)
    b, _, _ = cache.get_or_build(t1, sha1, d, 2, 6, tmp_path)  # another view seed
    with pytest.raises(ConfigError, match="distill.extra_teachers"):
        EnsembleCache([a, b])


def test_the_cached_ensemble_loss_is_the_live_ensemble_loss(teachers, tiny_data, tmp_path):
    """The objective given the cached logits of both teachers computes the loss it computes from the live
    teachers on the same images (fp16 storage apart): the list is read as the ensemble, in order."""
    from kdflow.config import build_config
    from kdflow.training.objective import DistillObjective

    d = data.load_prepared(tiny_data)
    (t0, _, sha0), (t1, _, sha1) = teachers
    ec, _, _ = get_or_build_all([t0, t1], [sha0, sha1], d, 1, 5, tmp_path)
    torch.manual_seed(0)
    student = models.build_model("cnn-small")
    xb, yb, idx = view_batch(d, ec, 0)
    for rule in ("mean_probs", "mean_logits"):
        cfg = build_config({"distill": {"temperature": 4.0, "alpha": 0.0, "ensemble": rule}}).distill
        objective = DistillObjective([t0, t1], student, cfg, (1, 28, 28), 10)
        live, _, _ = objective(student, xb, yb, 0)
        cached, _, _ = objective(student, xb, yb, 0, ec.teacher_logits(idx, 0))
        only_first, _, _ = objective(student, xb, yb, 0, ec.teacher_logits(idx, 0)[:1])
        assert torch.allclose(cached, live, rtol=1e-3, atol=1e-4), rule
        assert not torch.allclose(cached, only_first, rtol=1e-2), rule  # the second teacher counts


def test_the_distill_step_caches_every_teacher(teachers, tiny_data, tmp_path):
    from kdflow import steps

    (_, p0, _), (_, p1, _) = teachers
    cfg = tiny_config(
        tmp_path,
        distill={"cache": True, "extra_teachers": [{"arch": "cnn-wide", "source": str(p1)}]},
        student={"epochs": 1},
        storage={"reuse": False},
    )
    m = steps.distill(cfg, tiny_data, p0, tmp_path / "kd")["metrics"]
    assert len(m["cache_paths"]) == 2 and m["cache_path"] == m["cache_paths"][0] and m["cache_reused"] is False
    single = tiny_config(tmp_path, distill={"cache": True}, student={"epochs": 1}, storage={"reuse": False})
    m1 = steps.distill(single, tiny_data, p0, tmp_path / "kd1")["metrics"]
    assert m1["cache_reused"] is True and m1["cache_paths"] == m["cache_paths"][:1]  # the first teacher's file
    a = checkpoints.load_model(tmp_path / "kd" / "model.pt")[0].state_dict()
    b = checkpoints.load_model(tmp_path / "kd1" / "model.pt")[0].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the extra teacher shaped the student


def test_the_tune_learns_from_every_teacher_and_reads_the_ensembles_lead(teachers, tiny_data, tmp_path, monkeypatch):
    from kdflow.evaluation.metrics import predict_logits
    from kdflow.tune import record
    from kdflow.tune import trial as trial_module
    from kdflow.tune.run import open_context

    (t0, p0, sha0), (t1, p1, sha1) = teachers
    cfg = tiny_config(
        tmp_path,
        distill={"cache": True, "extra_teachers": [{"arch": "cnn-wide", "source": str(p1)}]},
        tune={"trials": 1, "space": {"students": ["cnn-small"], "epochs": [1, 1]}},
    )
    st = open_context(cfg, tiny_data, p0, tmp_path / "study", record.TrialRecorder(None, None))
    assert [sha for _, sha in st.ensemble()] == [sha0, sha1]
    d = st.prepared
    probs = [F.softmax(predict_logits(t, d.val, d.normalizer()), 1) for t in (t0, t1)]
    want = float(((probs[0] + probs[1]).argmax(1) == d.val.y).float().mean())
    assert st.teacher_val_accuracy() == pytest.approx(want)
    seen: list[int] = []
    real = trial_module.DistillObjective

    def spy(teachers_, *args, **kwargs):
        seen.append(len(teachers_))
        return real(teachers_, *args, **kwargs)

    monkeypatch.setattr(trial_module, "DistillObjective", spy)
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    trial_module.run_trial(trial, st, "distill")
    assert seen == [2]
    tc = next(iter(st.caches.values()))
    assert isinstance(tc, EnsembleCache) and len(tc.members) == 2


def test_the_evaluation_is_against_the_ensemble_that_taught_the_student(teachers, tiny_data, tmp_path):
    """The evaluate step's teacher row is the ensemble (distill.ensemble over --teacher and the extra teachers):
    accuracy of the averaged distribution, the members' parameters together, agreement and KL against it; a
    config whose extra teachers are not the files the student learnt from is refused before anything is written."""
    import shutil

    from kdflow import steps
    from kdflow.evaluation.metrics import predict_logits

    (t0, p0, _), (t1, p1, _) = teachers
    (tmp_path / "teacher").mkdir()
    shutil.copy(p0, tmp_path / "teacher" / "model.pt")  # a teacher directory made by hand
    extra = {"extra_teachers": [{"arch": "cnn-wide", "source": str(p1)}]}
    cfg = tiny_config(tmp_path, distill=extra, student={"epochs": 1}, storage={"reuse": False})
    steps.distill(cfg, tiny_data, tmp_path / "teacher" / "model.pt", tmp_path / "kd")
    s = steps.evaluate_models(cfg, tiny_data, tmp_path / "teacher", None, tmp_path / "kd", tmp_path / "eval")
    d = data.load_prepared(tiny_data)
    test = [predict_logits(t, d.test, d.normalizer()) for t in (t0, t1)]
    probs = [F.softmax(t, 1) for t in test]
    ensemble_pred = (probs[0] + probs[1]).argmax(1)
    teacher = s["models"]["teacher"]
    assert teacher["accuracy"] == pytest.approx(float((ensemble_pred == d.test.y).float().mean()))
    assert teacher["parameters"] == 2 * models.num_parameters(t0)
    assert [m["accuracy"] for m in s["teacher_members"]] == pytest.approx(
        [float((t.argmax(1) == d.test.y).float().mean()) for t in test]
    )
    student = predict_logits(checkpoints.load_model(tmp_path / "kd" / "model.pt")[0], d.test, d.normalizer())
    assert s["models"]["student"]["agreement_with_teacher"] == pytest.approx(
        float((student.argmax(1) == ensemble_pred).float().mean())
    )
    t = cfg.distill.temperature
    target = (F.softmax(test[0] / t, 1) + F.softmax(test[1] / t, 1)) / 2  # mean_probs at T, as the student learnt
    kl = F.kl_div(F.log_softmax(student / t, 1), target, reduction="batchmean")
    assert s["models"]["student"]["kl_teacher_student"] == pytest.approx(float(kl), rel=1e-4)
    assert s["models"]["student"]["retention"] == pytest.approx(
        s["models"]["student"]["accuracy"] / teacher["accuracy"]
    )
    assert "ensemble of 2" in (tmp_path / "eval" / "report.md").read_text()
    alone = tiny_config(tmp_path, student={"epochs": 1}, storage={"reuse": False})
    with pytest.raises(ConfigError, match=r"distill\.extra_teachers: the student .* learnt from 2 teacher"):
        steps.evaluate_models(alone, tiny_data, tmp_path / "teacher", None, tmp_path / "kd", tmp_path / "e1")
    other = tiny_config(tmp_path, distill={"extra_teachers": [{"arch": "cnn-wide", "source": str(p0)}]})
    with pytest.raises(ConfigError, match=r"distill\.extra_teachers\[0\]\.source: the file is not the teacher"):
        steps.evaluate_models(other, tiny_data, tmp_path / "teacher", None, tmp_path / "kd", tmp_path / "e2")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()  # refused before any write
