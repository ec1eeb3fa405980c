"""The teacher's own precision and layout (teacher.amp, teacher.channels_last): where they apply, what they change."""

from __future__ import annotations

import pytest
import torch

from kdflow.config import build_config
from kdflow.data import cache
from kdflow.data import prepared as data
from kdflow.errors import ConfigError
from kdflow.infra.fingerprint import fingerprint
from kdflow.models import zoo as models
from kdflow.models.compiled import frozen_forward
from kdflow.training.objective import DistillObjective


@pytest.mark.unit
def test_the_teacher_section_overrides_train_for_the_teacher_only():
    cfg = build_config({"teacher": {"amp": "bf16", "channels_last": True}, "train": {"amp": "off"}})
    assert (cfg.train_for("teacher").amp, cfg.train_for("teacher").channels_last) == ("bf16", True)
    assert (cfg.train_for("student").amp, cfg.train_for("student").channels_last) == ("off", False)
    assert cfg.train.amp == "off"  # the shared section itself is untouched
    plain = build_config({"train": {"amp": "bf16"}})
    assert plain.train_for("teacher").amp == "bf16"  # unset: the teacher follows train
    # the teacher's fingerprint sees its precision (bf16 weights differ); the students' never do
    assert fingerprint(cfg, "teacher", "d")["teacher.amp"] == "bf16"
    assert fingerprint(cfg, "scratch", "d") == fingerprint(
        plain.model_copy(update={"train": cfg.train}), "scratch", "d"
    )


@pytest.mark.unit
def test_bad_teacher_precision_is_refused():
    with pytest.raises(ConfigError, match=r"^teacher.amp: .*fix: "):
        build_config({"teacher": {"amp": "int4"}})


def _teacher():
    torch.manual_seed(0)
    t = models.build_model("cnn-wide")
    t.train()
    with torch.no_grad():
        t(torch.randn(32, 1, 28, 28))  # non-trivial batch-norm statistics
    return t.eval()


@pytest.mark.unit
def test_a_channels_last_teacher_gives_the_same_soft_targets():
    x = torch.randn(16, 1, 28, 28)
    student = models.build_model("cnn-small")
    cfg = build_config({}).distill
    plain = DistillObjective([_teacher()], student, cfg, (1, 28, 28), 10)
    cl = DistillObjective([_teacher()], student, cfg, (1, 28, 28), 10, teacher_channels_last=True)
    (a,), _ = plain.teacher_forward(x)
    (b,), _ = cl.teacher_forward(x)
    conv = next(p for p in cl.teachers[0].parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_a_channels_last_cache_build_stores_the_same_logits(tiny_data, tmp_path):
    prepared = data.load_prepared(tiny_data)
    key = cache.cache_key("sha", prepared, 1, 0)
    plain = cache.build(_teacher(), prepared, key)
    cl = cache.build(frozen_forward(_teacher(), channels_last=True, compiled=False), prepared, key)
    # fp16-stored logits: equal up to the last bit of a value rounded either way
    torch.testing.assert_close(plain.logits.float(), cl.logits.float(), rtol=2e-3, atol=2e-3)
    assert (plain.logits.float().argmax(-1) == cl.logits.float().argmax(-1)).float().mean() > 0.999


@pytest.mark.unit
def test_amp_off_from_the_command_line_means_off():
    from helpers import ROOT

    from kdflow.config import load_config

    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", "full", ["teacher.amp=off", "train.amp=off"])
    assert (cfg.teacher.amp, cfg.train.amp, cfg.train_for("teacher").amp) == ("off", "off", "off")
    assert load_config(ROOT / "configs" / "fashion_mnist.yaml", "full", []).train_for("teacher").amp == "bf16"
