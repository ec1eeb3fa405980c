"""Pixels on disk (#26): a dataset larger than memory is decoded once into pixels.u8 and read a batch at a time.

The disk store must be invisible to results: the same digests, statistics, batches and trained weights as the
in-memory splits; DataLoader workers must give the batches the main process would. Trees are written by the
tests; Fashion-MNIST comes from the Debian package.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers import tiny_config
from PIL import Image

from kdflow.config import build_config
from kdflow.data import pixels, storage
from kdflow.data import prepared as data
from kdflow.errors import DataError
from kdflow.models import zoo as models
from kdflow.training.objective import SupervisedObjective
from kdflow.training.trainer import fit


def _store(tmp_path, n=10, chw=(2, 3, 4)) -> tuple[pixels.DiskImages, torch.Tensor]:
    x = torch.arange(n * int(np.prod(chw)), dtype=torch.int64).remainder(251).to(torch.uint8).view(n, *chw)
    w = pixels.PixelWriter(tmp_path, chw)
    for img in x:
        w.append(img.numpy())
    w.finish()
    return pixels.DiskImages(tmp_path / pixels.STORE_FILE, chw, torch.arange(n)), x


@pytest.mark.unit
def test_disk_images_index_like_the_tensor(tmp_path):
    d, x = _store(tmp_path)
    assert d.shape == x.shape and len(d) == len(x)
    idx = torch.tensor([7, 0, 3, 3])
    mask = torch.tensor([i % 3 == 0 for i in range(10)])
    for key in (idx, mask, slice(2, 9, 3), 5):
        assert torch.equal(d[key], x[key])
    view = d.take(mask)  # a view: row numbers only, the pixels stay on disk
    assert isinstance(view, pixels.DiskImages) and torch.equal(view[torch.arange(len(view))], x[mask])
    joined = pixels.cat([d.take(slice(0, 2)), d.take(slice(0, 0)), d.take(torch.tensor([9]))])
    assert torch.equal(joined[:], x[[0, 1, 9]])
    assert torch.equal(torch.cat(list(pixels.chunks(d, chunk_bytes=50))), x)
    assert torch.equal(pickle.loads(pickle.dumps(view))[:], x[mask])
    assert storage.digest(d, torch.ones(3)) == storage.digest(x, torch.ones(3))


@pytest.mark.unit
def test_a_writer_refuses_another_shape_and_abort_leaves_nothing(tmp_path):
    w = pixels.PixelWriter(tmp_path, (1, 2, 2))
    w.append(np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        w.append(np.zeros((1, 3, 2), np.uint8))
    w.abort()
    assert list(tmp_path.iterdir()) == []


def _tree(root, n_per_class=5, seed=0) -> None:
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            h, w = (int(v) for v in rng.integers(12, 40, 2))
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").convert("L" if i % 3 == 0 else "RGB").save(
                root / c / f"{i}.{'png' if i % 2 else 'jpg'}"
            )


def _folder_cfg(root, **fields):
    raw = {
        "dataset": "imagefolder",
        "source": str(root),
        "image_size": 16,
        "channels": 3,
        "val_size": 2,
        "release_fraction": 0.2,
        **fields,
    }
    return build_config({"data": raw}).data


@pytest.mark.unit
def test_an_image_folder_on_disk_is_the_same_dataset_as_in_memory(tmp_path):
    _tree(tmp_path / "imgs", n_per_class=8)
    _tree(tmp_path / "pool", n_per_class=3, seed=1)
    fields = {"labels_kept": 5, "unlabeled": str(tmp_path / "pool")}
    mem = data.prepare(_folder_cfg(tmp_path / "imgs", storage="memory", **fields), tmp_path / "mem")
    disk = data.prepare(_folder_cfg(tmp_path / "imgs", storage="disk", **fields), tmp_path / "disk")
    assert (mem["storage"], disk["storage"]) == ("memory", "disk")
    for key in ("digest", "source_digest", "test_digest", "release_digest", "counts", "mean", "std"):
        assert mem[key] == disk[key], key
    assert not (tmp_path / "mem" / pixels.STORE_FILE).exists()
    store = tmp_path / "disk" / pixels.STORE_FILE
    assert store.stat().st_size == 22 * 3 * 16 * 16  # 16 labelled + 6 pool images, each decoded once
    assert not [p for p in (tmp_path / "disk").iterdir() if p.name.startswith(".")]  # no temporary left
    for name in ("train", "val", "test", "release", "unlabeled"):
        a, b = data.load_split(tmp_path / "mem", name), data.load_split(tmp_path / "disk", name)
        assert isinstance(b.x, pixels.DiskImages) and torch.equal(a.x, b.x[:]) and torch.equal(a.y, b.y), name


@pytest.mark.unit
def test_a_bad_file_in_a_disk_prep_leaves_no_store(tmp_path):
    _tree(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png"):
        data.prepare(_folder_cfg(tmp_path / "imgs", storage="disk"), tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.unit
def test_disk_storage_of_a_folder_needs_a_known_shape(tmp_path):
    _tree(tmp_path / "imgs")
    with pytest.raises(DataError, match=r"data\.storage.*data\.image_size and data\.channels"):
        data.prepare(_folder_cfg(tmp_path / "imgs", storage="disk", channels=None), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_auto_storage_goes_to_disk_above_the_threshold(tmp_path, monkeypatch):
    _tree(tmp_path / "imgs")
    assert data.prepare(_folder_cfg(tmp_path / "imgs"), tmp_path / "small")["storage"] == "memory"
    monkeypatch.setattr(storage, "AUTO_DISK_BYTES", 1000)  # 10 images x 768 bytes pass it
    assert data.prepare(_folder_cfg(tmp_path / "imgs"), tmp_path / "big")["storage"] == "disk"


@pytest.mark.unit
def test_worker_processes_give_the_main_process_batches(tmp_path):
    _tree(tmp_path / "imgs", n_per_class=10)
    data.prepare(_folder_cfg(tmp_path / "imgs", storage="disk", val_size=2), tmp_path / "d")
    d = data.load_prepared(tmp_path / "d")
    kw = dict(shuffle=True, augment={"enabled": True, "crop_padding": 2, "hflip": True}, seed=5)
    kw["mix"] = {"kind": "cutmix", "alpha": 1.0, "num_classes": 2}
    inline = list(data.iterate(d.train, 3, d.normalizer(), **kw))
    workers = list(data.iterate(d.train, 3, d.normalizer(), workers=2, **kw))
    assert len(inline) == len(workers) > 1
    for (xa, ya, ia), (xb, yb, ib) in zip(inline, workers, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


@pytest.mark.integration
def test_training_from_disk_with_workers_gives_the_in_memory_weights(tiny_data, tmp_path):
    """The same student, trained one epoch from the in-memory splits and from the disk store read by a worker."""
    cfg = tiny_config(tmp_path, data={"storage": "disk"})
    data.prepare(cfg.data, tmp_path / "disk")
    weights = []
    for source, workers in ((tiny_data, 0), (tmp_path / "disk", 1)):
        d = data.load_prepared(source)
        torch.manual_seed(0)
        student = models.build_model("cnn-small")
        train_cfg = cfg.train.model_copy(update={"loader_workers": workers})
        fit(student, SupervisedObjective(), d, train_cfg, epochs=1, lr=0.05, out_dir=tmp_path / f"run{workers}")
        weights.append(student.state_dict())
    assert isinstance(data.load_prepared(tmp_path / "disk").train.x, pixels.DiskImages)
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


@pytest.mark.unit
def test_decoding_in_worker_processes_gives_the_inline_dataset(tmp_path, monkeypatch):
    from kdflow.data import decode

    _tree(tmp_path / "imgs", n_per_class=6)
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image")
    inline = data.prepare(_folder_cfg(tmp_path / "imgs", storage="disk", max_bad_files=1), tmp_path / "a")
    monkeypatch.setattr(decode, "POOL_MIN_FILES", 1)
    real = decode.decode_files
    monkeypatch.setattr(decode, "decode_files", lambda jobs, workers=None: real(jobs, 2))
    import kdflow.data.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "decode_files", decode.decode_files)
    pooled = data.prepare(_folder_cfg(tmp_path / "imgs", storage="disk", max_bad_files=1), tmp_path / "b")
    assert pooled["digest"] == inline["digest"] and pooled["bad_files"] == inline["bad_files"] != []


@pytest.mark.unit
def test_large_images_are_cropped_per_sample_exactly_as_by_the_gather(monkeypatch):
    from kdflow.data import views

    x = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8)
    params = views.draw_augmentation(6, 3, True, torch.Generator().manual_seed(0))
    gathered = views.apply_augmentation(x, params, 3)
    monkeypatch.setattr(views, "SMALL_IMAGE", 1)
    assert torch.equal(views.apply_augmentation(x, params, 3), gathered)


@pytest.mark.unit
def test_a_truncated_pixel_store_is_one_line(tmp_path):
    _tree(tmp_path / "imgs")
    data.prepare(_folder_cfg(tmp_path / "imgs", storage="disk"), tmp_path / "d")
    store = tmp_path / "d" / pixels.STORE_FILE
    store.write_bytes(store.read_bytes()[: 3 * 16 * 16 * 2])  # two of the ten images left
    with pytest.raises(DataError, match=r"pixel store .* is truncated"):
        data.load_split(tmp_path / "d", "train")


@pytest.mark.unit
def test_a_failure_after_the_store_was_finished_removes_it(tmp_path):
    w = pixels.PixelWriter(tmp_path, (1, 2, 2))
    w.append_all(torch.zeros(3, 1, 2, 2, dtype=torch.uint8))
    w.finish()
    assert (tmp_path / pixels.STORE_FILE).stat().st_size == 12
    w.abort()
    assert list(tmp_path.iterdir()) == []
