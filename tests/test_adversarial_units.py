"""Attacks, ARD and data-free pieces without a dataset: checked against torchattacks and numerically."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import ROOT

from kdflow.config import DistillConfig, build_config, load_config
from kdflow.config.adversarial import AdversarialConfig, GeneratorConfig
from kdflow.errors import ConfigError
from kdflow.evaluation.attacks import PixelModel, fgsm, pgd
from kdflow.models import zoo as models
from kdflow.training.adversarial import TrainingAttack

pytestmark = pytest.mark.unit
MEAN, STD = (0.2860,), (0.3530,)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = PixelModel(models.build_model("cnn-small"), MEAN, STD).eval()
    x = torch.rand(48, 1, 28, 28)
    y = model(x).argmax(1)  # the model's own predictions: clean accuracy 100%, so every flip is the attack's
    return model, x, y


def _loss(model, x, y):
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


def test_fgsm_matches_torchattacks(batch):
    import torchattacks  # installed by make (--no-deps: see the Makefile)

    model, x, y = batch
    assert torch.equal(fgsm(model, x, y, 0.1), torchattacks.FGSM(model, eps=0.1)(x, y))


def test_pgd_matches_torchattacks_without_random_start(batch):
    import torchattacks  # installed by make (--no-deps: see the Makefile)

    model, x, y = batch
    ours = pgd(model, x, y, 0.1, 10, 0.025, random_start=False)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=10, random_start=False)(x, y)
    assert (ours - theirs).abs().max() < 1e-6  # the same algorithm; only the clamp's float rounding differs


def test_pgd_stays_in_the_ball_and_the_pixel_range_and_raises_the_loss(batch):
    model, x, y = batch
    gen = torch.Generator().manual_seed(3)
    adv = pgd(model, x, y, 0.1, 10, 0.025, random_start=True, generator=gen)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert _loss(model, adv, y) > _loss(model, x, y)
    fg = fgsm(model, x, y, 0.1)
    assert (fg - x).abs().max() <= 0.1 + 1e-6 and fg.min() >= 0 and fg.max() <= 1
    acc = {name: float((model(a).argmax(1) == y).float().mean()) for name, a in (("fgsm", fg), ("pgd", adv))}
    assert acc["pgd"] <= acc["fgsm"] < 1.0  # PGD is at least as strong as FGSM


def test_pgd_is_seeded_and_eps_zero_is_the_identity(batch):
    model, x, y = batch

    def run(seed):
        return pgd(model, x, y, 0.1, 3, 0.05, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert torch.equal(pgd(model, x, y, 0.0, 5, 0.1), x) and torch.equal(fgsm(model, x, y, 0.0), x)


def test_attack_restores_the_model_mode_and_leaves_parameter_gradients_alone(batch):
    model, x, y = batch
    student = model.model
    student.train()
    attack = TrainingAttack(AdversarialConfig(train_steps=2), MEAN, STD, seed=0)
    x_norm = (x - MEAN[0]) / STD[0]
    adv = attack(student, x_norm, y)
    assert student.training and all(p.grad is None for p in student.parameters())
    pixels = adv * STD[0] + MEAN[0]
    assert (pixels - x).abs().max() <= 0.1 + 1e-5
    assert int(attack.batches_seen) == 1 and "batches_seen" in attack.state_dict()


def test_training_attack_replays_after_a_reload(batch):
    """The random start of batch k depends on (seed, k); k is checkpointed with the objective."""
    model, x, y = batch
    student = model.model.eval()
    x_norm = (x - MEAN[0]) / STD[0]
    a = TrainingAttack(AdversarialConfig(train_steps=1), MEAN, STD, seed=0)
    a(student, x_norm, y)
    saved = a.state_dict()
    second = a(student, x_norm, y)
    b = TrainingAttack(AdversarialConfig(train_steps=1), MEAN, STD, seed=0)
    b.load_state_dict(saved)
    assert torch.equal(b(student, x_norm, y), second)


def test_ard_with_zero_radius_is_plain_kd():
    """ARD = KD with the soft term on the student's adversarial examples; at eps 0 those are the clean images."""
    from kdflow.training.objective import DistillObjective

    torch.manual_seed(0)
    teacher, student = models.build_model("cnn-wide"), models.build_model("cnn-small")
    x, y = (torch.rand(16, 1, 28, 28) - MEAN[0]) / STD[0], torch.randint(0, 10, (16,))  # normalised pixels
    student.eval()  # batch-norm in eval: two forwards of the same input give the same logits
    kd = DistillObjective([teacher], student, DistillConfig(method="kd"), (1, 28, 28), 10)
    zero = TrainingAttack(AdversarialConfig(eps=0.0, train_steps=1), MEAN, STD, seed=0)
    ard = DistillObjective([teacher], student, DistillConfig(method="ard"), (1, 28, 28), 10, zero)
    # equal up to the float rounding of the normalised -> pixel -> normalised round trip
    assert torch.allclose(kd(student, x, y, 0)[0], ard(student, x, y, 0)[0], rtol=1e-4)
    robust = TrainingAttack(AdversarialConfig(eps=0.2, train_steps=2), MEAN, STD, seed=0)
    ard2 = DistillObjective([teacher], student, DistillConfig(method="ard"), (1, 28, 28), 10, robust)
    total_kd, _, parts_kd = kd(student, x, y, 0)
    total_ard, logits, parts_ard = ard2(student, x, y, 0)
    assert torch.equal(parts_kd["hard"], parts_ard["hard"])  # the hard term is on the clean image
    assert parts_ard["soft"] > parts_kd["soft"]  # the soft term is on the attacked one
    with pytest.raises(Exception, match="adversarial"):
        DistillObjective([teacher], student, DistillConfig(method="ard"), (1, 28, 28), 10)


def test_rslad_attacks_the_teachers_soft_labels_and_keeps_a_sixth_on_the_clean_image():
    """RSLAD (Zi et al. 2021): the attack maximises the student's cross-entropy to the teacher's soft labels at
    T=1 (not to the hard label), and the soft term is 5/6 on the attacked image, 1/6 on the clean one."""
    from kdflow.training import losses
    from kdflow.training.objective import DistillObjective

    torch.manual_seed(0)
    teacher, student = models.build_model("cnn-wide"), models.build_model("cnn-small")
    x, y = (torch.rand(16, 1, 28, 28) - MEAN[0]) / STD[0], torch.randint(0, 10, (16,))
    student.eval()
    seen = []

    class Spy(TrainingAttack):
        def forward(self, model, x_, target):
            seen.append(target)
            return super().forward(model, x_, target)

    attack = Spy(AdversarialConfig(eps=0.2, train_steps=2), MEAN, STD, seed=0)
    cfg = DistillConfig(method="rslad", temperature=1.0, alpha=0.0)
    rslad = DistillObjective([teacher], student, cfg, (1, 28, 28), 10, attack)
    total, s_clean, parts = rslad(student, x, y, 0)
    with torch.no_grad():
        t = teacher(x)
    assert torch.allclose(seen[0], torch.softmax(t, 1), atol=1e-6)  # soft labels, not y
    replay = TrainingAttack(AdversarialConfig(eps=0.2, train_steps=2), MEAN, STD, seed=0)  # the same random start
    s_adv = student(replay(student, x, torch.softmax(t, 1)))
    want = 5 / 6 * losses.kd_soft_loss(s_adv, t, 1.0) + 1 / 6 * losses.kd_soft_loss(s_clean, t, 1.0)
    assert torch.allclose(parts["soft"], want, rtol=1e-5) and torch.allclose(total, want, rtol=1e-5)  # alpha 0
    ard_seen = []

    class ArdSpy(TrainingAttack):
        def forward(self, model, x_, target):
            ard_seen.append(target)
            return super().forward(model, x_, target)

    ard = DistillObjective(
        [teacher], student, DistillConfig(method="ard"), (1, 28, 28), 10, ArdSpy(AdversarialConfig(), MEAN, STD, 0)
    )
    ard(student, x, y, 0)
    assert torch.equal(ard_seen[0], y)  # ARD attacks the hard label
    twin = build_config({"distill": {"method": "rslad"}})
    assert twin.adversarial_scratch_twin and twin.distill.adversarial  # its baseline: the PGD-AT twin
    with pytest.raises(ConfigError, match="distill.features"):
        build_config(
            {"distill": {"method": "rslad", "features": [{"kind": "at", "student_module": "a", "teacher_module": "b"}]}}
        )


@pytest.mark.parametrize(
    "override, field",
    [
        ("adversarial.eps=-0.1", "adversarial.eps"),
        ("adversarial.eps=1.5", "adversarial.eps"),
        ("adversarial.train_eps=2", "adversarial.train_eps"),
        ("adversarial.steps=0", "adversarial.steps"),
        ("adversarial.train_steps=0", "adversarial.train_steps"),
        ("adversarial.curve_eps=[0.1, 3]", "adversarial.curve_eps"),
        ("distill.data_free=true", "distill"),  # without method dfad
        ("distill.method=dfad", "distill"),  # without data_free
    ],
)
def test_bad_adversarial_config_is_one_line(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "fashion_mnist.yaml", None, [override])
    msg = str(err.value)
    assert msg.startswith(field) and "fix:" in msg and "\n" not in msg


def test_data_free_refuses_what_needs_real_images():
    base = ["distill.method=dfad", "distill.data_free=true"]
    cases = {
        "distill.features=[{kind: at, student_module: block1, teacher_module: layer2}]": "feature loss",
        "distill.cache=true": "teacher cache",
        "train.mix=mixup": "mixing",
    }
    for extra, words in cases.items():
        with pytest.raises(ConfigError, match=words):
            load_config(ROOT / "configs" / "fashion_mnist.yaml", None, [*base, extra])
    with pytest.raises(ConfigError, match="ARD"):
        load_config(
            ROOT / "configs" / "fashion_mnist.yaml",
            None,
            ["distill.method=ard", "distill.features=[{kind: at, student_module: block1, teacher_module: layer2}]"],
        )


def test_generator_too_large_for_the_memory_limit():
    from kdflow.training.generator_memory import check_generator_fits

    check_generator_fits(GeneratorConfig(), 1, 28)  # the default fits this machine
    with pytest.raises(ConfigError, match=r"^distill\.generator: width 4096 .*fix: lower"):
        check_generator_fits(GeneratorConfig(width=4096, batch=512, memory_limit_mb=4096), 1, 28)


def test_generator_makes_pixels_and_bn_statistics_measure_the_distance():
    from kdflow.training.data_free import BatchNormStatistics, Generator, class_balance

    g = Generator(16, 8, 1, 28)
    img = g(torch.randn(4, 16))
    assert img.shape == (4, 1, 28, 28) and img.min() >= 0 and img.max() <= 1
    teacher = models.build_model("cnn-wide").train()
    real = torch.randn(256, 1, 28, 28)
    for _ in range(50):  # running statistics of "real" data
        teacher(real)
    teacher.eval()
    bn = BatchNormStatistics(teacher)
    teacher(real)
    near = float(bn.pop().detach())
    teacher(real * 3 + 2)
    far = float(bn.pop().detach())
    bn.remove()
    assert near < 0.2 * far
    uniform = torch.zeros(8, 10)
    peaked = torch.zeros(8, 10)
    peaked[:, 0] = 10
    assert float(class_balance(uniform)) < float(class_balance(peaked))  # balanced batches cost less


def test_the_confidence_term_is_the_teachers_cross_entropy_to_its_top_class_and_joins_the_generator_loss():
    """DAFL's one-hot term: low for images the teacher sees as one class, high for ambiguous ones; the generator
    step adds it times distill.generator.confidence_weight (same state and batch: the losses differ by exactly it)."""
    import copy

    from kdflow.training.data_free import DataFreeState, Generator, generator_step, teacher_confidence

    peaked, uniform = torch.zeros(8, 10), torch.zeros(8, 10)
    peaked[:, 3] = 10
    assert float(teacher_confidence(peaked)) < 1e-3 < float(teacher_confidence(uniform))
    logits = torch.randn(8, 10)
    assert torch.isclose(teacher_confidence(logits), nn.functional.cross_entropy(logits, logits.argmax(1)))
    losses = {}
    for w in (0.0, 2.0):
        torch.manual_seed(0)
        teacher, student = models.build_model("cnn-wide").eval(), models.build_model("cnn-small")
        generator = Generator(16, 8, 1, 28)
        gen = {"latent": 16, "width": 8, "batch": 8, "confidence_weight": w, "iterations": 2}
        cfg = build_config({"distill": {"method": "dfad", "data_free": True, "generator": gen}})
        st = DataFreeState(copy.deepcopy(student), teacher, generator, cfg, MEAN, STD)
        losses[w] = generator_step(st, 0, 0)
    assert losses[0.0]["confidence"] == pytest.approx(losses[2.0]["confidence"], rel=1e-5)
    assert losses[2.0]["generator"] - losses[0.0]["generator"] == pytest.approx(2 * losses[0.0]["confidence"], rel=1e-4)


def test_dfad_soft_loss_is_the_mean_absolute_logit_difference():
    from kdflow.training.loss_registry import SOFT_LOSSES

    s, t = torch.randn(5, 10), torch.randn(5, 10)
    assert torch.allclose(SOFT_LOSSES["dfad"].fn(s, [t], torch.zeros(5), DistillConfig(), 0), (s - t).abs().mean())
    assert SOFT_LOSSES["dfad"].data_free and SOFT_LOSSES["ard"].adversarial


def test_attack_fields_count_in_the_fingerprint_only_where_training_uses_them():
    from kdflow.infra.fingerprint import fingerprint

    def fp(role, *sets):
        return fingerprint(build_config({"distill": dict(sets)} if sets else {}), role, "d")

    kd = build_config({})
    kd_eps = build_config({"adversarial": {"eps": 0.2}})
    assert fingerprint(kd, "distill", "d") == fingerprint(kd_eps, "distill", "d")  # evaluation-only radius
    ard = build_config({"distill": {"method": "ard"}})
    ard_eps = build_config({"distill": {"method": "ard"}, "adversarial": {"eps": 0.2}})
    for role in ("distill", "scratch"):
        assert fingerprint(ard, role, "d") != fingerprint(ard_eps, role, "d")
    assert fingerprint(ard, "teacher", "d") == fingerprint(ard_eps, "teacher", "d")
    adv_teacher = build_config({"teacher": {"adversarial": True}})
    assert "adversarial.train_eps" in fingerprint(adv_teacher, "teacher", "d")
    assert fp("distill")  # the helper itself builds


def test_gate_reads_the_students_release_robust_accuracy():
    from kdflow.config import GateConfig
    from kdflow.evaluation.gate import quality_gate

    student = {
        "release_accuracy": 0.9,
        "release_retention": 1.0,
        "latency_p95_ms": 1.0,
        "size_bytes": 10,
        "val_pgd_accuracy": 0.99,  # selection split: never read by the gate
        "release_pgd_accuracy": 0.4,
        "pgd_accuracy": 0.99,  # test: reported, never read by the gate
    }
    assert quality_gate(GateConfig(min_robust_accuracy=0.35), student)["passed"]
    failed = quality_gate(GateConfig(min_robust_accuracy=0.5), student)
    assert not failed["passed"] and failed["checks"]["release_robust_accuracy"]["rule"] == "PGD 0.4000 >= 0.5"
    missing = quality_gate(GateConfig(min_robust_accuracy=0.1), {**student, "release_pgd_accuracy": None})
    assert not missing["passed"] and "not evaluated" in missing["checks"]["release_robust_accuracy"]["rule"]


def test_knob_data_free_false_means_from_the_config():
    from kdflow.config.knobs import knob_overrides

    assert knob_overrides(data_free=False, adversarial_eps=-1.0, min_robust_accuracy=-1.0) == []
    assert knob_overrides(data_free=True, method="dfad", min_robust_accuracy=0.3) == [
        "distill.data_free=True",
        "distill.method=dfad",
        "gate.min_robust_accuracy=0.3",
    ]


def test_report_rows_say_how_each_model_was_trained():
    from kdflow.evaluation.report import render_report

    row = {
        "accuracy": 0.8,
        "f1_macro": 0.8,
        "parameters": 10,
        "size_bytes": 100,
        "latency_p50_ms": 0.1,
        "throughput_ips": 1.0,
        "fgsm_accuracy": 0.5,
        "pgd_accuracy": 0.4,
        "robust_eps": 0.1,
        "robust_steps": 10,
        "robust_samples": 200,
        "robustness_curve": [],
    }
    student = {**row, "kl_teacher_student": 0.1, "nll": 0.5, "ece": 0.01}
    gate = {"passed": True, "checks": {}}
    ev = {
        "models": {"teacher": row, "scratch": row, "student": student},
        "data_digest": "0" * 16,
        "method": "ard",
        "scratch_adversarial": True,
        "quality_gate": gate,
        "robust_gain": 0.03,
    }
    text = render_report(ev)
    assert "| student (ARD) |" in text and "| student (scratch, PGD-AT) |" in text
    assert "PGD-10 eps=0.1" in text and "| 50.00% | 40.00% |" in text and "+3.00 pt" in text
    text = render_report({**ev, "method": "dfad", "scratch_adversarial": False, "data_free": True})
    assert "| student (data-free DFAD) |" in text and "generator_samples.png" in text


def test_which_roles_train_on_adversarial_examples():
    from types import SimpleNamespace

    from kdflow.steps.train import training_attack

    prepared = SimpleNamespace(mean=MEAN, std=STD)
    ard = build_config({"distill": {"method": "ard"}})
    kd_robust_teacher = build_config({"teacher": {"adversarial": True}})
    assert {r: training_attack(ard, r, prepared) is not None for r in ("teacher", "scratch", "distill")} == {
        "teacher": False,
        "scratch": True,  # ARD's baseline: the PGD-AT scratch twin
        "distill": True,
    }
    assert {r: training_attack(kd_robust_teacher, r, prepared) is not None for r in ("teacher", "scratch")} == {
        "teacher": True,
        "scratch": False,
    }


def test_robust_evaluation_keeps_the_model_in_eval_mode():
    """At eps 0 the curve is the clean accuracy of the subset, and batch-norm buffers stay untouched
    (an attack once restored the wrapper's default train mode, so later batches ran in train mode)."""
    from kdflow.data.batches import Split
    from kdflow.data.prepared import PreparedData
    from kdflow.evaluation.metrics import accuracy, predict_logits
    from kdflow.evaluation.robustness import robustness_report

    torch.manual_seed(0)
    x = torch.randint(0, 256, (600, 1, 28, 28), dtype=torch.uint8)
    split = Split(x, torch.randint(0, 10, (600,)))
    prepared = PreparedData(split, split, split, [str(i) for i in range(10)], MEAN, STD, {})
    model = models.build_model("cnn-small")
    model.train()
    for _ in range(3):  # running statistics far from the defaults
        model(torch.randn(64, 1, 28, 28) * 3 + 1)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = robustness_report(model, prepared, AdversarialConfig(eval_samples=600, curve_eps=[0.0, 0.1], steps=2))
    clean = accuracy(predict_logits(model, split, prepared.normalizer()), split.y)
    assert r["robustness_curve"][0]["pgd_accuracy"] == clean
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
