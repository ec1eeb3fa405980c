"""distill.compile_teacher: a torch.compile'd teacher gives the eager teacher's soft targets, online and cached.

Also the device-follow rule it relies on: teachers sit outside the objective's module tree, yet
``objective.to(...)`` must move them (a CUDA run would otherwise feed CUDA batches to a CPU teacher).
"""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config

from kdflow import steps
from kdflow.config import build_config
from kdflow.data import cache
from kdflow.data import prepared as data
from kdflow.errors import ConfigError
from kdflow.infra import checkpoints
from kdflow.infra.io import sha256_file
from kdflow.models import zoo as models
from kdflow.models.compiled import require_cpp_compiler
from kdflow.training.objective import DistillObjective

pytestmark = pytest.mark.integration


def _graphs_compiled() -> int:
    """Graphs dynamo has compiled since the last reset: proves the compiled path ran (parity alone would not)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _reset_compile_counters() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def _pair(compile_teacher: bool):
    torch.manual_seed(0)
    teacher = models.build_model("cnn-small")
    torch.manual_seed(1)
    student = models.build_model("cnn-small")
    cfg = build_config({"distill": {"compile_teacher": compile_teacher}}).distill
    return student, DistillObjective([teacher], student, cfg, (1, 28, 28), 10)


def test_compiled_teacher_gives_the_eager_loss_and_gradients():
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    grads = []
    for compile_teacher in (False, True):
        _reset_compile_counters()
        student, objective = _pair(compile_teacher)
        loss, _, parts = objective(student, x, y, 0)
        loss.backward()
        assert (_graphs_compiled() > 0) == compile_teacher
        grads.append((loss.detach(), parts["soft"], [p.grad.clone() for p in student.parameters()]))
    (l0, s0, g0), (l1, s1, g1) = grads
    assert torch.allclose(l0, l1, atol=1e-5) and torch.allclose(s0, s1, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g0, g1, strict=True))
    # the compiled forward shares the teacher's weights, which stay frozen
    _, objective = _pair(True)
    assert all(not p.requires_grad for t in objective.teachers for p in t.parameters())


def test_objective_to_moves_the_teachers():
    _, objective = _pair(False)
    objective.to(torch.float64)
    assert all(p.dtype == torch.float64 for t in objective.teachers for p in t.parameters())
    assert all(b.dtype == torch.float64 for t in objective.teachers for b in t.buffers() if b.is_floating_point())


def test_compiled_teacher_builds_the_same_cache(tiny_data, tmp_path):
    torch.manual_seed(0)
    teacher = models.build_model("cnn-small").eval()
    teacher_pt = tmp_path / "teacher.pt"
    checkpoints.save_model(teacher, "cnn-small", 10, 1, 28, teacher_pt)
    d = data.load_prepared(tiny_data)
    caches = {}
    for compile_teacher in (False, True):
        cfg = tiny_config(
            tmp_path,
            distill={
                "cache": True,
                "cache_views": 1,
                "compile_teacher": compile_teacher,
                "cache_dir": str(tmp_path / f"cache-{compile_teacher}"),
            },
            storage={"reuse": False},  # compile_teacher is not in the fingerprint: the second run must train
        )
        _reset_compile_counters()
        info = steps.distill(cfg, tiny_data, teacher_pt, tmp_path / f"kd-{compile_teacher}")
        assert info["metrics"]["cache_reused"] is False
        assert (_graphs_compiled() > 0) == compile_teacher  # the cache was built through the compiled teacher
        key = cache.cache_key(sha256_file(teacher_pt), d, 1, 0)
        caches[compile_teacher] = cache.load(info["metrics"]["cache_path"], key)
    assert torch.allclose(caches[False].logits.float(), caches[True].logits.float(), atol=1e-2, rtol=1e-3)
    assert torch.equal(caches[False].params, caches[True].params)


def test_compile_teacher_refused_with_feature_losses():
    with pytest.raises(ConfigError, match="compile_teacher"):
        build_config(
            {
                "distill": {
                    "compile_teacher": True,
                    "features": [{"kind": "at", "student_module": "block1", "teacher_module": "block1"}],
                }
            }
        )


def test_missing_cpp_compiler_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"distill\.compile_teacher: .*C\+\+ compiler.*fix: install"):
        require_cpp_compiler()
