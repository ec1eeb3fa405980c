"""kdflow tune's pieces without training: the tune section, the student family, budgets, Pareto, mixing."""

from __future__ import annotations

import json
import math
import sqlite3

import optuna
import pytest
import torch
from helpers import tiny_config

from kdflow.config import build_config
from kdflow.data.mixing import apply_mix, draw_mix, mixed_targets
from kdflow.errors import ConfigError, KdflowError, ModelError
from kdflow.models import zoo as models
from kdflow.tune import report, space, study

pytestmark = pytest.mark.unit
SHAPE = (1, 28, 28)


@pytest.mark.parametrize(
    "override, field",
    [
        ({"space": {"students": []}}, "tune.space.students"),
        ({"space": {"lr": [0.2, 0.02]}}, "tune.space.lr"),
        ({"space": {"alpha": [0.0, 1.5]}}, "tune.space.alpha"),
        ({"space": {"methods": ["kd+nope"]}}, "tune.space.methods"),
        ({"space": {"cnn_width": [8]}}, "tune.space.cnn_width"),
        ({"objectives": ["val_accuracy", "flops"]}, "tune.objectives"),
        ({"objectives": ["params"]}, "tune.objectives"),
        ({"trials": 0}, "tune.trials"),
        ({"space": {"unknown": 1}}, "tune.space.unknown"),
        ({"space": {"methods": ["dkd"], "mix": ["mixup"]}}, "tune.space"),
    ],
)
def test_bad_tune_sections_are_one_line_errors(override, field):
    with pytest.raises(ConfigError) as e:
        build_config({"tune": override})
    assert str(e.value).startswith(field) and "; fix: " in str(e.value) and "\n" not in str(e.value)


def test_mix_with_dkd_refused():
    with pytest.raises(ConfigError, match="train.mix=none or distill.method=kd"):
        build_config({"train": {"mix": "mixup"}, "distill": {"method": "dkd"}})


def test_parametric_family_spans_sizes_and_has_cnn_small_shape():
    sizes = [
        models.num_parameters(models.build_model(models.param_cnn_name(w, d)))
        for w, d in [(4, 2), (8, 2), (16, 3), (32, 4)]
    ]
    assert sizes == sorted(sizes) and sizes[0] < 5_000 and sizes[-1] > 90_000
    small = models.num_parameters(models.build_model("cnn-small"))
    assert abs(models.num_parameters(models.build_model("cnn-8x2")) - small) <= 24  # cnn-small has conv biases
    assert models.build_model("cnn-16x3")(torch.zeros(2, *SHAPE)).shape == (2, 10)
    with pytest.raises(ModelError):
        models.build_model("cnn-8x1")


def test_budget_gives_the_widest_width_that_fits():
    cfg = build_config({"tune": {"max_params": 60_000, "space": {"students": ["cnn", "mlp"], "cnn_width": [4, 64]}}})
    build = space.student_builder(cfg, SHAPE, 10, None)
    feasible = space.feasible_students(cfg.tune, SHAPE, build)
    assert feasible.fixed == []  # mlp has 235K parameters
    for depth, width in feasible.max_width.items():
        fits = space.static_cost(build, models.param_cnn_name(width, depth), SHAPE)["params"]
        over = space.static_cost(build, models.param_cnn_name(width + 1, depth), SHAPE)["params"]
        assert fits <= 60_000 < over or width == 64


def test_a_budget_nothing_meets_is_refused():
    cfg = build_config({"tune": {"max_params": 1000}})
    with pytest.raises(ConfigError, match="no student in the search space meets the budget"):
        space.feasible_students(cfg.tune, SHAPE, space.student_builder(cfg, SHAPE, 10, None))


def test_the_budget_is_checked_at_the_size_prep_will_give(tmp_path):
    """A built-in dataset resized by data.image_size (and data.channels) is budgeted at that shape before prep:
    a CNN's MACs grow with the image's area, so the native 28 x 28 would pass students the data makes too costly."""
    from kdflow.tune.checks import known_inputs
    from kdflow.tune.run import tune

    assert known_inputs(build_config({})) == ((1, 28, 28), 10, None)
    assert known_inputs(build_config({"data": {"image_size": 56, "channels": 3}})) == ((3, 56, 56), 10, None)
    cfg = build_config({"data": {"image_size": 56}, "tune": {"max_macs": 600_000, "space": {"students": ["cnn"]}}})
    build = space.student_builder(cfg, SHAPE, 10, None)
    assert space.feasible_students(cfg.tune, SHAPE, build).max_width  # at 28 x 28 cnn-8x2 fits (290K MACs)
    with pytest.raises(ConfigError, match="no student in the search space meets the budget"):
        tune(cfg, tmp_path / "study")  # at 56 x 56 none does (cnn-8x2: 1.16M MACs): refused before any work
    assert not (tmp_path / "study").exists()


def _trial(number: int, acc: float, params: int) -> optuna.trial.FrozenTrial:
    return optuna.trial.FrozenTrial(
        number=number,
        state=optuna.trial.TrialState.COMPLETE,
        value=acc,
        values=None,
        datetime_start=None,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={"val_accuracy": acc, "params": params, "macs": params * 10, "arch": f"a{number}"},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


def test_pareto_front_and_pick():
    trials = [_trial(0, 0.90, 10_000), _trial(1, 0.91, 50_000), _trial(2, 0.89, 60_000), _trial(3, 0.91, 40_000)]
    front = report.pareto_front(trials, "params")
    assert [t.number for t in front] == [0, 3]  # 1 is dominated by 3 (same accuracy, cheaper), 2 by both
    assert report.pick(trials, "params").number == 3  # best accuracy; the tie goes to the cheaper student


def test_mixup_and_cutmix_mix_images_and_labels_consistently():
    gen = torch.Generator().manual_seed(0)
    x, px = torch.zeros(6, 1, 28, 28), torch.ones(6, 1, 28, 28)
    mix = draw_mix(6, 100, "mixup", 1.0, (28, 28), gen)
    mixed = apply_mix(x, px, mix, "mixup")
    assert torch.allclose(mixed.mean((1, 2, 3)), 1 - mix.lam)
    cut = draw_mix(6, 100, "cutmix", 1.0, (28, 28), torch.Generator().manual_seed(1))
    pasted = apply_mix(x, px, cut, "cutmix")
    assert torch.allclose(pasted.mean((1, 2, 3)), 1 - cut.lam)  # lam is the share of pixels kept
    t = mixed_targets(torch.tensor([0] * 6), torch.tensor([1] * 6), mix.lam, 10)
    assert torch.allclose(t.sum(1), torch.ones(6)) and torch.allclose(t[:, 0], mix.lam)
    again = draw_mix(6, 100, "mixup", 1.0, (28, 28), torch.Generator().manual_seed(0))
    assert torch.equal(again.partner, mix.partner) and torch.equal(again.lam, mix.lam)
    assert not math.isclose(float(mix.lam.std()), 0.0)


def test_study_of_another_config_is_refused_without_touching_it(tmp_path):
    cfg = tiny_config(tmp_path)
    study.write_identity(tmp_path, cfg)
    db = tmp_path / study.DB
    with sqlite3.connect(db) as conn:  # a database that opens (a corrupt one is refused: test_bad_input)
        conn.execute("CREATE TABLE trials (n INTEGER)")
    before = db.read_bytes()
    study.check_identity(tmp_path, cfg)  # same config: fine
    study.check_identity(tmp_path, build_config({**cfg.to_dict(), "tune": {"trials": 99}}))  # a budget: fine
    other = build_config({**cfg.to_dict(), "tune": {"space": {"lr": [0.01, 0.1]}}})
    with pytest.raises(ConfigError, match=r"tune.space.lr"):
        study.check_identity(tmp_path, other)
    assert db.read_bytes() == before
    # a study recorded before tune.space.augment existed is the same study at its default, not with it searched
    ident = tmp_path / study.IDENTITY
    ident.write_text(json.dumps({k: v for k, v in json.loads(ident.read_text()).items() if k != "tune.space.augment"}))
    study.check_identity(tmp_path, cfg)
    with pytest.raises(ConfigError, match=r"tune.space.augment"):
        study.check_identity(tmp_path, build_config({**cfg.to_dict(), "tune": {"space": {"augment": [True, False]}}}))


def test_a_study_continued_with_another_teacher_file_is_refused(tmp_path):
    """An extra teacher is named by its path; the study records every teacher's sha256 and refuses to continue
    when a file there changed (trials of two ensembles would mix)."""
    study.check_teachers(tmp_path, ["a" * 64, "b" * 64])  # the first run records them
    study.check_teachers(tmp_path, ["a" * 64, "b" * 64])
    with pytest.raises(ConfigError, match=r"^distill.extra_teachers\[0\].source: .*another file there"):
        study.check_teachers(tmp_path, ["a" * 64, "c" * 64])
    with pytest.raises(ConfigError, match=r"^teacher: "):
        study.check_teachers(tmp_path, ["d" * 64, "b" * 64])
    (tmp_path / study.TEACHERS).write_text("{not json")
    with pytest.raises(KdflowError, match=r"^--out: .*not readable JSON"):  # damaged: one line
        study.check_teachers(tmp_path, ["a" * 64, "b" * 64])


def test_scratch_twin_recipe_applies_to_the_scratch_step_only():
    cfg = build_config(
        {"scratch_twin": {"lr": 0.03, "epochs": 7, "mix": "mixup", "augment": False}, "student": {"lr": 0.1}}
    )
    twin = cfg.scratch_config()
    assert (twin.lr_for("student"), twin.epochs_for("student"), twin.train.mix) == (0.03, 7, "mixup")
    assert not twin.data.augment and cfg.data.augment  # its own train view
    assert (cfg.lr_for("student"), cfg.train.mix) == (0.1, "none")


def test_the_train_view_is_a_shared_knob_only_when_asked():
    cfg = build_config({"tune": {"space": {"augment": [True, False]}}})
    trial = optuna.trial.FixedTrial({"lr": 0.05, "weight_decay": 5e-4, "epochs": 15, "mix": "none", "augment": False})
    recipe = space.sample_recipe(trial, cfg.tune, distill=False)
    assert recipe["augment"] is False
    assert not space.trial_config(cfg, "mlp", recipe).data.augment  # best.yaml prepares its data without
    plain = space.sample_recipe(trial, build_config({}).tune, distill=False)  # not searched: no parameter
    assert "augment" not in plain and space.trial_config(cfg, "mlp", plain).data.augment


def test_min_kd_gain_gate_reads_the_release_gain():
    from kdflow.evaluation.gate import kd_verdict, quality_gate

    student = {"release_accuracy": 0.9, "release_retention": 0.95, "latency_p95_ms": 1.0, "size_bytes": 1000}
    g = build_config({"gate": {"min_kd_gain": 0.005}}).gate
    assert quality_gate(g, student, 0.006)["passed"]
    assert not quality_gate(g, student, 0.004)["passed"]
    assert not quality_gate(g, student, None)["passed"]  # no twin evaluated: the requirement is not met
    assert "kd_gain" not in quality_gate(build_config({}).gate, student, -0.01)["checks"]
    assert "use the scratch model" in kd_verdict(-0.001) and "paid" in kd_verdict(0.002)
    # no release split (prepared by hand, or release_fraction 0): accuracy and retention cannot pass
    empty = quality_gate(g, {**student, "release_accuracy": None, "release_retention": None, "val_accuracy": 0.99}, 0.1)
    assert not empty["passed"] and "no release split" in empty["checks"]["release_accuracy"]["rule"]


def test_the_space_on_named_inputs_builds_students_on_the_students_inputs():
    from kdflow.data.multiview import layout

    cfg = build_config(
        {
            "data": {"dataset": "multiview-digits"},
            "student": {"arch": "mlp", "inputs": ["view:fou"]},
            "tune": {"max_params": 40_000, "space": {"students": ["mlp", "linear"]}},
        }
    )
    build = space.student_builder(cfg, (649,), 10, layout())
    feasible = space.feasible_students(cfg.tune, (649,), build)
    assert feasible.fixed == ["linear"]  # the mlp on 76 Fourier values has 53K parameters, the linear 770
    assert space.static_cost(build, "linear", (649,))["params"] == 76 * 10 + 10


def test_a_tune_that_does_not_pay_says_why_with_its_figures(tmp_path):
    from kdflow.tune.run import TuneResult, verdict_lines

    recipe = {"alpha": 0.85, "temperature": 1.09, "lr": 0.05}
    pick = {"arch": "cnn-small", "params": 9146, "trial": 4, "val_accuracy": 0.9060, "recipe": recipe}
    twin = {"arch": "cnn-small", "params": 9146.0, "trial": 1, "val_accuracy": 0.9066, "train_accuracy": 0.8918}
    summary = {"scratch_trials": 8}
    lines = verdict_lines(TuneResult(tmp_path, pick, twin, -0.0006, tmp_path / "best.yaml", summary))
    assert "did not pay" in lines[2]
    assert lines[3] == (
        "why: the scratch twin underfits (last-epoch training accuracy 89.18%, validation 90.66%): cnn-small "
        "(9,146 params) is capacity-bound and the teacher's extra signal has nowhere to go; the distillation recipe "
        "the search kept weighs the labels 0.85 at T 1.09; a larger student is where distillation can pay"
    )
    fits = {**twin, "train_accuracy": 0.95}
    lines = verdict_lines(TuneResult(tmp_path, pick, fits, -0.0006, tmp_path / "best.yaml", summary))
    assert lines[3].startswith("why: the scratch twin is not capacity-bound (last-epoch training accuracy 95.00%")
    # a teacher barely above the twin has little to teach: said first, with both figures
    near = {**summary, "teacher_val_accuracy": 0.9110}
    lines = verdict_lines(TuneResult(tmp_path, pick, twin, -0.0006, tmp_path / "best.yaml", near))
    assert lines[3].startswith(
        "why: the teacher leads the twin by only +0.44 pt on validation (91.10% vs 90.66%): it has little to teach"
    )
    far = {**summary, "teacher_val_accuracy": 0.9400}
    lines = verdict_lines(TuneResult(tmp_path, pick, twin, -0.0006, tmp_path / "best.yaml", far))
    assert lines[3].startswith("why: the scratch twin underfits") and "the teacher leads it by +3.34 pt" in lines[3]
    # a study recorded before training accuracy was kept, or one that pays: no "why" line
    old = {k: v for k, v in twin.items() if k != "train_accuracy"}
    assert not any(
        x.startswith("why") for x in verdict_lines(TuneResult(tmp_path, pick, old, -0.0006, tmp_path, summary))
    )
    assert not any(
        x.startswith("why") for x in verdict_lines(TuneResult(tmp_path, pick, twin, 0.01, tmp_path, summary))
    )


def test_a_gain_within_chance_does_not_pay_and_one_beyond_it_does(tmp_path):

    from kdflow.evaluation.significance import pack_correct, unpack_correct
    from kdflow.tune import verdict
    from kdflow.tune.run import TuneResult, verdict_lines

    twin_correct = torch.zeros(1000, dtype=torch.bool)
    twin_correct[:900] = True
    assert torch.equal(unpack_correct(pack_correct(twin_correct)), twin_correct)  # 1,000 bits, not a multiple of 8
    assert unpack_correct(pack_correct(twin_correct[:13])).tolist() == twin_correct[:13].tolist()
    close, far = twin_correct.clone(), twin_correct.clone()
    close[900:904] = True  # +0.4 pt: 4 images only the distilled student gets right, none only the twin
    far[900:940] = True  # +4.0 pt
    far[:5] = False  # and 5 the other way: +3.5 pt
    twin = {"arch": "cnn-39x3", "params": 79960, "trial": 1, "val_accuracy": 0.900, "train_accuracy": 0.93}
    twin_attrs = {"val_correct": pack_correct(twin_correct)}

    def result(correct, acc):
        pick = {"arch": "cnn-39x3", "params": 79960, "trial": 3, "val_accuracy": acc, "recipe": {}}
        test = verdict.paired({"val_correct": pack_correct(correct)}, twin_attrs)
        summary = {"scratch_trials": 8, "kd_gain_val_mcnemar": test, "verdict_alpha": 0.05}
        return TuneResult(tmp_path, pick, twin, acc - 0.900, tmp_path / "best.yaml", summary)

    within = result(close, 0.904)
    assert within.summary["kd_gain_val_mcnemar"] == {
        "images": 1000,
        "distilled_only_correct": 4,
        "twin_only_correct": 0,
        "p_value": 0.0625,  # 0.5 ** 4: four coin flips all one way
    }
    lines = verdict_lines(within)
    assert not within.pays and lines[2].startswith("distillation did not pay beyond noise for this budget: +0.40 pt")
    assert "McNemar p=0.062" in lines[2] and lines[3].startswith("why: the scratch twin is not capacity-bound")
    beyond = result(far, 0.935)
    assert beyond.pays and verdict_lines(beyond)[2].startswith("distillation pays for this budget")
    assert (
        "40 of 1,000 validation images only the distilled student gets right, 5 only the twin"
        in (verdict_lines(beyond)[2])
    )
    # a study recorded before trials kept per-image results: judged on the gain, and it says so
    old = TuneResult(tmp_path, within.pick, twin, 0.004, tmp_path / "best.yaml", {"scratch_trials": 8})
    assert old.pays and "not tested against chance" in verdict_lines(old)[2]
    # two records of different validation sets are not paired
    assert verdict.paired({"val_correct": pack_correct(close[:999])}, twin_attrs) is None
