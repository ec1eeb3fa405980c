"""The teacher-output cache: same view for teacher and student, keys, refusal of stale caches."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config, view_batch

from kdflow.config import build_config
from kdflow.data import cache
from kdflow.data import prepared as data
from kdflow.errors import ConfigError
from kdflow.infra import checkpoints
from kdflow.models import zoo as models

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    d = data.load_prepared(tiny_data)
    torch.manual_seed(0)
    teacher = models.build_model("cnn-wide").eval()
    teacher_pt = tmp / "teacher.pt"
    checkpoints.save_model(teacher, "cnn-wide", 10, 1, 28, teacher_pt)
    from kdflow.infra.io import sha256_file

    sha = sha256_file(teacher_pt)
    tc, path, reused = cache.get_or_build(teacher, sha, d, views=3, seed=5, cache_dir=tmp / "c")
    return {
        "d": d,
        "teacher": teacher,
        "sha": sha,
        "cache": tc,
        "path": path,
        "reused": reused,
        "tmp": tmp,
        "teacher_pt": teacher_pt,
    }


def test_student_sees_exactly_the_view_the_teacher_saw(setup):
    d, tc, teacher = setup["d"], setup["cache"], setup["teacher"]
    for epoch in (0, 1, 4):  # epoch 4 wraps to view 1
        xb, _, idx = view_batch(d, tc, epoch)
        with torch.no_grad():
            live = teacher(xb)
        assert torch.allclose(tc.logits_for(idx, epoch), live, atol=2e-2, rtol=1e-2)
    # views differ from each other (augmentation is on) and from the un-augmented image
    assert not torch.equal(tc.params[0], tc.params[1])


def test_raw_logits_not_probabilities(setup):
    tc = setup["cache"]
    assert tc.logits.dtype == torch.float16
    sums = tc.logits[0][:50].float().sum(1)
    assert not torch.allclose(sums, torch.ones_like(sums))
    assert (tc.logits[0][:50] < 0).any()


def test_logits_beyond_float16_are_kept_in_float32_and_non_finite_ones_refused():
    """A teacher with logits of 2e7 (a resnet18 after one fp16 epoch at lr 0.1, found by scripts/gpu-check.sh's
    CPU rehearsal) overflowed the fp16 cache to inf: the student's first batch was NaN."""
    small = torch.tensor([[1.0, -2.0], [3.5, 0.25]])
    assert cache.compact(small).dtype == torch.float16
    huge = torch.tensor([[2.0e7, -1.0], [3.0, 1.0]])
    kept = cache.compact(huge)
    assert kept.dtype == torch.float32 and torch.equal(kept, huge)
    with pytest.raises(ConfigError, match=r"^teacher: the teacher's logits are not finite"):
        cache.compact(torch.tensor([[float("nan"), 0.0]]))


def test_reuse_and_key(setup):
    assert setup["reused"] is False
    again, path, reused = cache.get_or_build(setup["teacher"], setup["sha"], setup["d"], 3, 5, setup["tmp"] / "c")
    assert reused and path == setup["path"] and torch.equal(again.logits, setup["cache"].logits)
    # another view seed is another set of views: a separate cache, never the stored one
    other, other_path, other_reused = cache.get_or_build(
        setup["teacher"], setup["sha"], setup["d"], 3, 6, setup["tmp"] / "c"
    )
    assert not other_reused and other_path != setup["path"]
    assert not torch.equal(other.params, setup["cache"].params)


@pytest.mark.parametrize(
    "field,value",
    [
        ("teacher_sha256", "0" * 64),
        ("data_digest", "f" * 64),
        ("augmentation", {"enabled": False, "crop_padding": 0, "hflip": False}),
        ("views", 4),
        ("seed", 6),
    ],
)
def test_stale_cache_refused(setup, field, value):
    expected = dict(setup["cache"].key)
    expected[field] = value
    with pytest.raises(ConfigError, match=f"stale teacher cache.*{field}"):
        cache.load(setup["path"], expected)


def test_config_refuses_cache_with_feature_losses():
    with pytest.raises(ConfigError, match="distill"):
        build_config(
            {
                "distill": {
                    "cache": True,
                    "features": [{"kind": "at", "student_module": "block1", "teacher_module": "block1"}],
                }
            }
        )


def test_cached_distillation_step(setup, tiny_data, tmp_path):
    from kdflow import steps

    # model reuse off: the second run must train, from the reused cache
    cfg = tiny_config(tmp_path, distill={"cache": True}, student={"epochs": 2}, storage={"reuse": False})
    info = steps.distill(cfg, tiny_data, setup["teacher_pt"], tmp_path / "kd")
    m = info["metrics"]
    assert m["cache_views"] == 2 and m["cache_reused"] is False and m["epochs"] == 2
    info2 = steps.distill(cfg, tiny_data, setup["teacher_pt"], tmp_path / "kd2")
    assert info2["metrics"]["cache_reused"] is True
    # same cache + same seed -> the same student as the first cached run
    a = checkpoints.load_model(tmp_path / "kd" / "model.pt")[0].state_dict()
    b = checkpoints.load_model(tmp_path / "kd2" / "model.pt")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mixed_views_the_teacher_saw_are_the_ones_the_student_gets(setup, tmp_path):
    """Function matching offline: the cache stores each view's partner and weight and the teacher's
    logits on the mixed image; the trainer's batches rebuild exactly that image."""
    d, teacher = setup["d"], setup["teacher"]
    for kind in ("mixup", "cutmix"):
        tc, path, _ = cache.get_or_build(teacher, setup["sha"], d, 2, 5, tmp_path, {"kind": kind, "alpha": 1.0})
        reloaded = cache.load(path, tc.key)
        for epoch in (0, 1):
            xb, targets, idx = view_batch(d, reloaded, epoch, mix={"kind": kind, "alpha": 1.0, "num_classes": 10})
            with torch.no_grad():
                live = teacher(xb)
            assert torch.allclose(reloaded.logits_for(idx, epoch), live, atol=2e-2, rtol=1e-2)
            assert targets.shape == (len(idx), 10) and torch.allclose(targets.sum(1), torch.ones(len(idx)))
            assert (targets.max(1).values < 1).any()  # the labels are mixed too
        plain = cache.cache_key(setup["sha"], d, 2, 5)
        assert tc.key != plain and key_differs_only_in_mix(tc.key, plain)


def key_differs_only_in_mix(a: dict, b: dict) -> bool:
    return {k for k in a if a[k] != b.get(k)} == {"mix"}


def test_topk_expansion_keeps_the_top_probabilities_and_the_normaliser():
    torch.manual_seed(0)
    full = torch.randn(50, 10) * 3
    values, index = full.topk(3, dim=1)
    lse = torch.logsumexp(full, 1)
    out = cache.expand_topk(values, index, lse, 10)
    assert torch.allclose(torch.logsumexp(out, 1), lse, atol=1e-5)
    assert torch.allclose(out.softmax(1).gather(1, index), full.softmax(1).gather(1, index), atol=1e-6)
    assert torch.equal(out.argmax(1), full.argmax(1))
    rest = out.scatter(1, index, float("nan"))  # the 7 others share one logit
    assert torch.allclose(rest.nan_to_num(0).sum(1) / 7, rest.nanmean(1), atol=1e-5)
    assert torch.equal(cache.expand_topk(*full.topk(10, dim=1), lse, 10), full)


def test_a_topk_cache_stores_fewer_bytes_and_serves_the_top_logits(setup, tmp_path):
    d, teacher, full = setup["d"], setup["teacher"], setup["cache"]
    tc, path, _ = cache.get_or_build(teacher, setup["sha"], d, 3, 5, tmp_path, topk=2)
    assert tc.key["topk"] == 2 and "topk" not in full.key  # a full cache's key is as it always was
    assert tc.bytes_per_view() < full.bytes_per_view()
    reloaded = cache.load(path, tc.key)
    idx = torch.arange(100)
    served, exact = reloaded.logits_for(idx, 1), full.logits_for(idx, 1)  # the same views, the same teacher
    top = exact.topk(2, dim=1).indices
    assert torch.equal(served.argmax(1), exact.argmax(1))
    assert torch.allclose(served.gather(1, top), exact.gather(1, top), atol=1e-2)
    with pytest.raises(ConfigError, match="topk"):
        cache.load(path, full.key)  # a top-k cache is never served as a full one
