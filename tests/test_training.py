"""Trainer and distillation invariants: frozen teacher, exact resume, hooks and adapters."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config

from kdflow.config import FeatureLossSpec
from kdflow.data import prepared as data
from kdflow.errors import ModelError
from kdflow.models import zoo as models
from kdflow.training.objective import DistillObjective, SupervisedObjective
from kdflow.training.trainer import fit


def _prepared(tiny_data, n=640):
    d = data.load_prepared(tiny_data)
    d.train = data.Split(d.train.x[:n], d.train.y[:n])
    return d


def _teacher(arch="cnn-wide"):
    torch.manual_seed(1)
    t = models.build_model(arch)
    # give BatchNorm non-trivial running stats so a change would show
    t.train()
    with torch.no_grad():
        t(torch.randn(32, 1, 28, 28))
    return t.eval()


@pytest.mark.integration
def test_teacher_weights_and_bn_buffers_bit_identical(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path)
    d = _prepared(tiny_data)
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(0)
    student = models.build_model("cnn-small")
    spec = FeatureLossSpec(kind="fitnets", student_module="block2", teacher_module="block2", weight=1.0)
    cfg.distill.features = [spec]
    obj = DistillObjective([teacher], student, cfg.distill, (1, 28, 28), 10)
    teacher.train()  # a stray .train() must be undone by the objective every step
    fit(student, obj, d, cfg.train, epochs=1, lr=0.05, out_dir=tmp_path / "run", resume=False)
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"teacher {k} changed"
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    # the teacher is not part of the objective's parameters (so never in the optimizer)
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in obj.parameters()}
    assert len(list(obj.parameters())) > 0  # the FitNets adapter is trained with the student


def _fit_run(tiny_data, out, epochs, stop_after=None, distill=False, build=lambda: models.build_model("cnn-small")):
    cfg = tiny_config(out)
    d = _prepared(tiny_data, 384)
    torch.manual_seed(cfg.train.seed)
    student = build()
    obj = DistillObjective([_teacher()], student, cfg.distill, (1, 28, 28), 10) if distill else SupervisedObjective()

    class Stop(Exception):
        pass

    def on_epoch(row):
        if stop_after is not None and row["epoch"] == stop_after:
            raise Stop

    try:
        result = fit(student, obj, d, cfg.train, epochs=epochs, lr=0.05, out_dir=out, on_epoch=on_epoch)
    except Stop:
        return None, None
    return student, result


@pytest.mark.parametrize("distill", [False, True])
@pytest.mark.integration
def test_resume_equals_uninterrupted(tiny_data, tmp_path, distill):
    full, full_res = _fit_run(tiny_data, tmp_path / "a", 3, distill=distill)
    _fit_run(tiny_data, tmp_path / "b", 3, stop_after=2, distill=distill)  # "crash" after epoch 2
    resumed, res = _fit_run(tiny_data, tmp_path / "b", 3, distill=distill)
    assert res.resumed_from == 1  # zero-based epoch index of the last checkpoint
    for (k, v1), (_, v2) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(v1, v2), k
    assert [h["total"] for h in full_res.history] == [h["total"] for h in res.history]


@pytest.mark.integration
def test_same_seed_same_result(tiny_data, tmp_path):
    a, _ = _fit_run(tiny_data, tmp_path / "x", 1)
    b, _ = _fit_run(tiny_data, tmp_path / "y", 1)
    for v1, v2 in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(v1, v2)


@pytest.mark.parametrize(
    "teacher_arch,student_arch,t_mod,s_mod,kind",
    [
        ("cnn-wide", "cnn-small", "block2", "block2", "fitnets"),  # CNN -> CNN, 64 vs 16 channels
        ("resnet20", "mlp", "layer3", "fc2", "fitnets"),  # ResNet -> MLP, 4-D -> 2-D
        ("resnet20", "cnn-small", "layer2", "block1", "at"),  # 14x14 both, channel-free
        ("resnet20", "cnn-small", "layer3", "block2", "sp"),
        ("resnet20", "mlp", "fc", "fc3", "rkd"),
    ],
)
@pytest.mark.unit
def test_hooks_and_adapters(teacher_arch, student_arch, t_mod, s_mod, kind, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.distill.features = [FeatureLossSpec(kind=kind, student_module=s_mod, teacher_module=t_mod, weight=1.0)]
    teacher = _teacher(teacher_arch)
    student = models.build_model(student_arch)
    obj = DistillObjective([teacher], student, cfg.distill, (1, 28, 28), 10)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss, logits, parts = obj(student, x, y, 0)
    assert torch.isfinite(loss) and "feature" in parts and float(parts["feature"]) > 0
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    if kind == "fitnets":
        assert any(p.grad is not None for p in obj.parameters())
    # hooks never rewrite the model: the student's module tree is unchanged
    assert not any("adapter" in n for n, _ in student.named_modules())


@pytest.mark.unit
def test_missing_module_and_unbridgeable_shapes(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.distill.features = [FeatureLossSpec(kind="fitnets", student_module="block9", teacher_module="block2")]
    with pytest.raises(ModelError, match="block9"):
        DistillObjective([_teacher()], models.build_model("cnn-small"), cfg.distill, (1, 28, 28), 10)
    # cnn-small block2 is 7x7, torchvision resnet18 layer2 is 4x4 on 28x28 input: no integer ratio
    cfg.distill.features = [FeatureLossSpec(kind="fitnets", student_module="block2", teacher_module="layer2")]
    with pytest.raises(ModelError, match=r"block2.*layer2.*\(16, 7, 7\).*\(128, 4, 4\)"):
        DistillObjective([_teacher("resnet18")], models.build_model("cnn-small"), cfg.distill, (1, 28, 28), 10)


@pytest.mark.unit
def test_class_count_mismatch(tmp_path):
    cfg = tiny_config(tmp_path)
    teacher = models.build_model("cnn-small", num_classes=5)
    with pytest.raises(ModelError, match="classes"):
        DistillObjective([teacher], models.build_model("cnn-small"), cfg.distill, (1, 28, 28), 10)


@pytest.mark.integration
def test_nan_guard(tiny_data, tmp_path):
    from kdflow.errors import TrainingDiverged

    cfg = tiny_config(tmp_path)
    d = _prepared(tiny_data, 256)
    student = models.build_model("cnn-small")
    with pytest.raises(TrainingDiverged, match="train.lr"):
        fit(student, SupervisedObjective(), d, cfg.train, epochs=1, lr=1e12, out_dir=tmp_path / "nan", resume=False)


@pytest.mark.unit
def test_collapsed_epochs_counts_trailing_chance_after_a_rise():
    from kdflow.training.trainer import collapsed_epochs

    h = [{"val_acc": v} for v in (0.10, 0.11)]
    assert collapsed_epochs(h, 10) == 0  # never rose: a slow start, not a collapse
    h = [{"val_acc": v} for v in (0.10, 0.80, 0.104, 0.103)]
    assert collapsed_epochs(h, 10) == 2
    h = [{"val_acc": v} for v in (0.80, 0.10, 0.60, 0.10)]
    assert collapsed_epochs(h, 10) == 1  # recovered once, so only the last epoch counts


class _CollapsingObjective(SupervisedObjective):
    """True labels in epoch 1, then every label is class 0: the student falls to one constant answer."""

    def forward(self, student, x, y, epoch):
        return super().forward(student, x, y if epoch == 0 else torch.zeros_like(y), epoch)


@pytest.mark.integration
def test_collapse_guard_stops_a_collapsed_student(tiny_data, tmp_path):
    from kdflow.errors import TrainingDiverged

    cfg = tiny_config(tmp_path)
    d = data.load_prepared(tiny_data)
    with pytest.raises(TrainingDiverged, match=r"collapsed to chance.*epoch 3.*fix: lower train.lr"):
        fit(
            models.build_model("cnn-small"),
            _CollapsingObjective(),
            d,
            cfg.train,
            epochs=6,
            lr=0.03,
            out_dir=tmp_path / "collapse",
            resume=False,
        )
    cfg.train.collapse_patience = 0  # off: the same run finishes, at chance
    result = fit(
        models.build_model("cnn-small"),
        _CollapsingObjective(),
        d,
        cfg.train,
        epochs=4,
        lr=0.03,
        out_dir=tmp_path / "off",
        resume=False,
    )
    assert result.history[0]["val_acc"] > 0.3 and result.history[-1]["val_acc"] <= 0.15


@pytest.mark.unit
def test_zoo_sizes():
    assert 260_000 < models.num_parameters(models.build_model("resnet20")) < 280_000
    assert 8_000 < models.num_parameters(models.build_model("cnn-small")) < 10_000
    assert models.num_parameters(models.build_model("mlp")) == 784 * 256 + 256 + 256 * 128 + 128 + 1290
    m = models.build_model("tv:mobilenet_v3_small", num_classes=10, in_channels=1)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    rep = models.model_report(models.build_model("cnn-small"), (1, 28, 28))
    assert rep["macs"] > 0 and rep["size_bytes"] > rep["parameters"] * 4


def _dropout_student():
    """Dropout masks come from the global RNG, which a resume must restore."""
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(64, 10)
    )


@pytest.mark.integration
def test_resume_is_exact_with_dropout(tiny_data, tmp_path):
    full, _ = _fit_run(tiny_data, tmp_path / "a", 3, build=_dropout_student)
    _fit_run(tiny_data, tmp_path / "b", 3, stop_after=1, build=_dropout_student)
    resumed, res = _fit_run(tiny_data, tmp_path / "b", 3, build=_dropout_student)
    assert res.resumed_from == 0  # it resumed after the first epoch instead of retraining from scratch
    for (k, v1), (_, v2) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(v1, v2), k
