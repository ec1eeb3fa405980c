"""The unlabeled transfer set (#26): labels kept for N images, a folder of images without labels, the teacher
labelling them for the distilled student only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from PIL import Image

from kdflow import steps
from kdflow.data import prepared as data
from kdflow.data.batches import Split
from kdflow.data.transfer_set import UNLABELED, keep_labels, read_pool
from kdflow.errors import ConfigError, DataError
from kdflow.training.losses import distillation_terms


@pytest.mark.unit
def test_keep_labels_is_seeded_and_splits_the_train_images():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    train = Split(x, torch.arange(100) % 10)
    labelled, dropped = keep_labels(train, 30, seed=0)
    again, _ = keep_labels(train, 30, seed=0)
    assert len(labelled) == 30 and len(dropped) == 70 and torch.equal(labelled.x, again.x)
    assert set(labelled.x.flatten().tolist()).isdisjoint(dropped.flatten().tolist())
    assert not torch.equal(keep_labels(train, 30, seed=1)[0].x, labelled.x)
    assert keep_labels(train, None, 0)[0] is train
    with pytest.raises(DataError, match=r"^data.labels_kept: 100 is not fewer than the 100 train images"):
        keep_labels(train, 100, 0)


@pytest.mark.unit
def test_the_hard_loss_skips_the_unlabeled_rows_and_the_soft_loss_keeps_them():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([2, UNLABELED, 0, UNLABELED, UNLABELED, 1])
    soft = logits.pow(2).mean()  # stands for the soft term over every row
    terms = distillation_terms(logits, y, soft, alpha=0.5)
    labelled = y >= 0
    # summed over the labelled rows, divided by the batch: each labelled row weighs as in a labelled batch
    assert torch.allclose(terms.hard, F.cross_entropy(logits[labelled], y[labelled], reduction="sum") / 6)
    full = distillation_terms(logits, torch.tensor([2, 1, 0, 3, 3, 1]), soft, alpha=0.5)
    assert torch.allclose(full.hard, F.cross_entropy(logits, torch.tensor([2, 1, 0, 3, 3, 1])))  # the usual mean
    none = distillation_terms(logits, torch.full((6,), UNLABELED), soft, alpha=0.5)
    assert float(none.hard.detach()) == 0.0
    none.total.backward()  # a batch of pool images only still trains through the soft term
    assert logits.grad is not None and bool(logits.grad.abs().sum() > 0)


@pytest.mark.unit
def test_a_folder_of_unlabeled_images_is_fitted_to_the_data(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "pool" / "day1").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(tmp_path / "pool" / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), "RGB").save(tmp_path / "pool" / "day1" / "b.jpg")
    (tmp_path / "pool" / "day1" / "notes.txt").write_text("no image")
    (tmp_path / "pool" / ".hidden.png").write_bytes(b"ignored")
    with pytest.raises(DataError, match=r"^data.unlabeled: .*notes.txt': not an image file"):
        read_pool(tmp_path / "pool", (1, 28, 28), max_bad=0)
    x, bad = read_pool(tmp_path / "pool", (1, 28, 28), max_bad=1)
    assert (
        x.shape == (2, 1, 28, 28)
        and x.dtype == torch.uint8
        and [b["file"] for b in bad] == ["unlabeled/day1/notes.txt"]
    )


@pytest.fixture(scope="module")
def pooled(tiny_data, tmp_path_factory):
    """Fashion-MNIST with 300 labels kept; the other 1,200 train images (and a folder of 20) unlabeled."""
    tmp = tmp_path_factory.mktemp("pool")
    raw = data.load_prepared(tiny_data)
    (tmp / "folder").mkdir()
    for i in range(20):
        Image.fromarray(raw.test.x[i, 0].numpy(), "L").save(tmp / "folder" / f"{i}.png")
    cfg = tiny_config(tmp, data={"labels_kept": 300, "unlabeled": str(tmp / "folder")})
    manifest = data.prepare(cfg.data, tmp / "data")
    steps.train(cfg, "teacher", tmp / "data", tmp / "teacher")
    return {"tmp": tmp, "cfg": cfg, "manifest": manifest}


@pytest.mark.integration
def test_prep_keeps_n_labels_and_pools_the_rest(pooled):
    m = pooled["manifest"]
    assert m["counts"]["train"] == 300 and m["counts"]["unlabeled"] == 1200 + 20
    pool = data.load_split(pooled["tmp"] / "data", "unlabeled")
    assert len(pool) == 1220 and bool((pool.y == UNLABELED).all())  # the dropped labels are nowhere in the pool
    train = data.load_prepared(pooled["tmp"] / "data").train
    pool_bytes = {bytes(x.numpy()) for x in pool.x}
    assert not any(bytes(x.numpy()) in pool_bytes for x in train.x)  # kept and dropped images are disjoint
    teacher = json.loads((pooled["tmp"] / "teacher" / "history.json").read_text())
    assert "labelled" not in teacher[0]  # the teacher trains on the 300 labelled images only


@pytest.mark.integration
def test_the_distilled_student_learns_from_the_pool_and_its_twin_does_not(pooled, tmp_path):
    cfg, tmp = pooled["cfg"], pooled["tmp"]
    student = steps.distill(cfg, tmp / "data", tmp / "teacher" / "model.pt", tmp_path / "student")
    assert student is not None and student["lineage"]["kdflow.transfer_set"] == "1220"
    history = json.loads((tmp_path / "student" / "history.json").read_text())
    assert history[0]["labelled"] == pytest.approx(300 / 1520, abs=0.03)  # a share of the images seen
    off = cfg.model_copy(deep=True)
    off.distill.unlabeled = False
    labels_only = steps.distill(off, tmp / "data", tmp / "teacher" / "model.pt", tmp_path / "labels-only")
    assert labels_only is not None and "kdflow.transfer_set" not in labels_only["lineage"]
    assert (
        labels_only["fingerprint"]["distill.unlabeled"] is False and "distill.unlabeled" not in student["fingerprint"]
    )
    scratch = steps.train(cfg, "scratch", tmp / "data", tmp_path / "scratch")
    assert "labelled" not in json.loads((tmp_path / "scratch" / "history.json").read_text())[0]
    assert scratch["metrics"]["test_accuracy"] > 0


@pytest.mark.integration
@pytest.mark.parametrize(
    "override,field", [({"distill": {"method": "dkd"}}, "distill.method"), ({"train": {"mix": "mixup"}}, "train.mix")]
)
def test_what_needs_labels_is_refused_with_a_pool_in_one_line(pooled, tmp_path, override, field):
    raw = pooled["cfg"].to_dict()
    for section, values in override.items():
        raw[section].update(values)
    cfg = type(pooled["cfg"]).model_validate(raw)
    with pytest.raises(ConfigError, match=rf"^{field}: .*fix: set distill.unlabeled=false"):
        steps.distill(cfg, pooled["tmp"] / "data", pooled["tmp"] / "teacher" / "model.pt", tmp_path / "s")
    assert not (tmp_path / "s").exists()
