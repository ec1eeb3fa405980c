"""One loss path: the objective computes exactly the golden-tested functions, chosen from the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdflow.config import build_config
from kdflow.errors import ConfigError
from kdflow.models import zoo as models
from kdflow.steps import results
from kdflow.training import loss_registry, losses
from kdflow.training.objective import DistillObjective

pytestmark = pytest.mark.unit


def _pair():
    torch.manual_seed(0)
    return models.build_model("cnn-wide").eval(), models.build_model("cnn-small")


@pytest.mark.parametrize("T,alpha", [(4.0, 0.1), (1.0, 0.5), (2.0, 1.0)])
def test_objective_total_is_kd_loss(T, alpha):
    teacher, student = _pair()
    cfg = build_config({"distill": {"temperature": T, "alpha": alpha}})
    obj = DistillObjective([teacher], student, cfg.distill, (1, 28, 28), 10)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    total, s_logits, parts = obj(student, x, y, 0)
    with torch.no_grad():
        t_logits = teacher(x)
    assert torch.equal(total, losses.kd_loss(s_logits, t_logits, y, T, alpha))
    assert torch.equal(parts["soft"], losses.kd_soft_loss(s_logits, t_logits, T).detach())


def test_dkd_objective_uses_dkd_loss():
    teacher, student = _pair()
    cfg = build_config({"distill": {"method": "dkd", "dkd_warmup_epochs": 0, "alpha": 0.3}})
    obj = DistillObjective([teacher], student, cfg.distill, (1, 28, 28), 10)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    _, s_logits, parts = obj(student, x, y, 0)
    with torch.no_grad():
        want = losses.dkd_loss(s_logits, teacher(x), y, 4.0, 1.0, 8.0)
    assert torch.equal(parts["soft"], want.detach())


def test_a_new_feature_loss_is_one_function_and_one_registry_line(monkeypatch):
    def cosine_loss(s, t):
        return (1 - F.cosine_similarity(s.flatten(1), t.flatten(1))).mean()

    monkeypatch.setitem(loss_registry.FEATURE_LOSSES, "cosine", loss_registry.FeatureLoss(cosine_loss, project=True))
    cfg = build_config(
        {"distill": {"features": [{"kind": "cosine", "student_module": "block2", "teacher_module": "block2"}]}}
    )
    teacher, student = _pair()
    obj = DistillObjective([teacher], student, cfg.distill, (1, 28, 28), 10)
    _, _, parts = obj(student, torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)), 0)
    assert float(parts["feature"]) > 0
    assert len(list(obj.parameters())) > 0  # project=True gave it a trained adapter


def test_unknown_loss_names_the_registered_ones():
    with pytest.raises(ConfigError, match=r"distill.features.0.kind: unknown loss 'cos'.*fitnets, at, sp, rkd"):
        build_config({"distill": {"features": [{"kind": "cos", "student_module": "a", "teacher_module": "b"}]}})


def test_step_result_round_trip_and_refusal(tmp_path):
    written: results.TrainResult = {
        "role": "scratch",
        "arch": "cnn-small",
        "data_digest": "d" * 64,
        "metrics": {"test_accuracy": 0.9},
        "pipeline_run_id": "run",
        "parent_run_id": None,
        "lineage": {"kdflow.method": "kd"},
    }
    results.write(tmp_path, written)
    assert results.read(tmp_path, results.TrainResult) == written
    assert results.read(tmp_path / "absent", results.TrainResult) is None
    (tmp_path / "step.json").write_text('{"role": "scratch"}')
    with pytest.raises(Exception, match="is not a TrainResult"):
        results.read(tmp_path, results.TrainResult)
