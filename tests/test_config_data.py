"""Config profiles and overrides; data resolution, IDX parsing, seeded splits, augmentation, manifest."""

from __future__ import annotations

import gzip

import pytest
import torch
from helpers import ROOT, tiny_config

from kdflow.config import build_config, config_from_yaml_text, flatten, knob_overrides, load_config, write_resolved
from kdflow.data import prepared as data
from kdflow.errors import ConfigError, DataError

CONFIG = ROOT / "configs" / "fashion_mnist.yaml"


@pytest.mark.unit
def test_profiles_merge_over_base():
    full = load_config(CONFIG, "full")
    default = load_config(CONFIG, "default")
    smoke = load_config(CONFIG, "smoke")
    assert full.teacher.arch == "resnet20" and full.epochs_for("teacher") == 15  # BENCH.md recipe
    assert default.teacher.arch == "cnn-wide" and default.epochs_for("student") == 4
    assert smoke.data.train_subset == 6000 and smoke.distill.temperature == 4.0
    assert smoke.profile == "smoke"


@pytest.mark.unit
def test_overrides_and_resolved_roundtrip(tmp_path):
    cfg = load_config(
        CONFIG,
        "smoke",
        ["distill.temperature=2.5", "distill.features=[{kind: at, student_module: block1, teacher_module: block1}]"],
    )
    assert cfg.distill.temperature == 2.5 and cfg.distill.features[0].kind == "at"
    path = write_resolved(cfg, tmp_path)
    again = load_config(path)
    assert again == cfg and again.digest() == cfg.digest()


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"train": {"epochz": 3}}, "train.epochz"),
        ({"nonsense": {}}, "nonsense"),
        ({"distill": {"temperature": 0}}, "distill.temperature"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
    ],
)
@pytest.mark.unit
def test_config_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError) as e:
        build_config(raw)
    assert str(e.value).startswith(field + ":") and "fix:" in str(e.value)


@pytest.mark.unit
def test_knob_overrides_skip_sentinels():
    assert knob_overrides(temperature=-1.0, method="", alpha=0.3, data_window="2026-11") == [
        "distill.alpha=0.3",
        "data.window=2026-11",
    ]


@pytest.mark.unit
def test_embedded_json_config_parses():
    cfg = config_from_yaml_text('{"distill": {"alpha": 0.5}}', None, [])
    assert cfg.distill.alpha == 0.5
    assert "distill.alpha" in flatten(cfg.to_dict())


@pytest.mark.integration
def test_debian_idx_and_manifest(tiny_data):
    d = data.load_prepared(tiny_data)
    m = d.manifest
    assert m["source"].startswith("debian:") and m["counts"] == {
        "train": 1500,
        "val": 500,
        "test": 500,
        "release": 3101,
    }
    assert len(d.release) == 3101 and m["release_fraction"] == 0.05  # ~5% of the 60,000 raw train images
    assert m["class_names"][9] == "Ankle boot" and len(m["digest"]) == 64
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape[1:] == (1, 28, 28)
    # the test split is the first test_subset samples of the official test set, untouched by the split seed
    full = data.read_idx(data.DEBIAN_DIRS["fashion-mnist"][0] / "t10k-labels-idx1-ubyte.gz")
    assert d.test.y.tolist() == full[:500].tolist()


@pytest.mark.integration
def test_split_is_seeded_and_disjoint(fashion_available, tmp_path):
    cfg = tiny_config(tmp_path)
    raw = data.load_raw(cfg.data)
    a = data.split_raw(raw, cfg.data)
    b = data.split_raw(raw, cfg.data)
    assert torch.equal(a[0].x, b[0].x) and torch.equal(a[1].y, b[1].y)
    other = data.split_raw(raw, cfg.data.model_copy(update={"split_seed": 5}))
    assert not torch.equal(a[1].x, other[1].x)
    # train and val never share a sample
    tr = {bytes(x.numpy()) for x in a[0].x}
    assert not any(bytes(x.numpy()) in tr for x in a[1].x[:200])


@pytest.mark.unit
def test_augmentation_is_deterministic_and_shape_preserving():
    x = torch.randint(0, 255, (16, 1, 28, 28), dtype=torch.uint8)
    a = data.augment_batch(x, 2, True, torch.Generator().manual_seed(3))
    b = data.augment_batch(x, 2, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    none = data.augment_batch(x, 0, False, torch.Generator().manual_seed(3))
    assert torch.equal(none, x)
    flipped = data.augment_batch(x, 0, True, torch.Generator().manual_seed(0))
    for i in range(16):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


@pytest.mark.integration
def test_truncated_idx_is_a_data_error(tmp_path, fashion_available):
    src = fashion_available / "train-labels-idx1-ubyte.gz"
    raw = gzip.open(src).read()
    bad = tmp_path / "labels.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(raw[:1000])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.read_idx(bad)
    bad.write_bytes(open(src, "rb").read()[:500])  # a cut gzip stream
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.read_idx(bad)


@pytest.mark.unit
def test_imagefolder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(torch.randint(0, 255, (12, 12, 3), dtype=torch.uint8).numpy()).save(
                tmp_path / "imgs" / c / f"{i}.png"
            )
    cfg = build_config({"data": {"dataset": "imagefolder", "source": str(tmp_path / "imgs"), "val_size": 4}})
    m = data.prepare(cfg.data, tmp_path / "out")
    assert m["class_names"] == ["cat", "dog"] and m["input_shape"] == [3, 12, 12]
    assert sum(m["counts"].values()) == 20 and len(m["mean"]) == 3


@pytest.mark.unit
def test_imagefolder_reads_16_bit_images_on_the_8_bit_scale_and_names_a_damaged_file(tmp_path):
    """imagefolder reads through the guarded image loader: a 16-bit PNG is its 8-bit twin (it was read raw,
    values up to 65535 cast to uint8), and a truncated file is one line naming it, before anything is written."""
    import numpy as np
    from PIL import Image

    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 4).astype(np.uint8)
    for c in ("eight", "sixteen"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
    for i in range(5):
        Image.fromarray(grey, mode="L").save(tmp_path / "imgs" / "eight" / f"{i}.png")
        Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "imgs" / "sixteen" / f"{i}.png")
    raw = data.load_raw(build_config({"data": {"dataset": "imagefolder", "source": str(tmp_path / "imgs")}}).data)
    assert raw.train_x.shape[1:] == (1, 8, 8)
    by_class = {int(y): x for x, y in zip(raw.train_x, raw.train_y, strict=True)}
    assert torch.equal(by_class[0], by_class[1])  # the 16-bit image equals its 8-bit twin
    damaged = tmp_path / "imgs" / "eight" / "9.png"
    damaged.write_bytes((tmp_path / "imgs" / "eight" / "0.png").read_bytes()[:30])
    cfg = build_config({"data": {"dataset": "imagefolder", "source": str(tmp_path / "imgs"), "val_size": 2}})
    with pytest.raises(DataError, match=r"^data.source: .*9.png' is not a readable image"):
        data.prepare(cfg.data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_data_window_selects_train_samples_and_keeps_test(fashion_available, tmp_path):
    cfg = tiny_config(tmp_path)
    raw = data.load_raw(cfg.data)
    a = data.split_raw(raw, cfg.data.model_copy(update={"window": "0:3000", "train_subset": None}))
    b = data.split_raw(raw, cfg.data.model_copy(update={"window": "3000:9000", "train_subset": None}))
    members = data.release_members(raw.train_x, raw.train_y, cfg.data.release_fraction, cfg.data.release_seed)
    assert len(a[0]) + len(a[1]) == 3000 - int(members[:3000].sum())
    assert len(b[0]) + len(b[1]) == 6000 - int(members[3000:9000].sum())
    assert torch.equal(a[2].x, b[2].x)  # the frozen test split never moves with the window
    label = data.split_raw(raw, cfg.data.model_copy(update={"window": "2026-11", "train_subset": None}))
    assert len(label[0]) + len(label[1]) + len(label[3]) == 60000
    with pytest.raises(DataError, match="data.window"):
        data.split_raw(raw, cfg.data.model_copy(update={"window": "0:99999"}))


@pytest.mark.unit
def test_release_membership_is_by_content():
    """A copy of an image is on the same side as the original wherever it sits in the stream; the share is
    the configured fraction; the label is part of the content."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4000, 1, 4, 4), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (4000,), generator=gen)
    member = data.release_members(x, y, 0.1, 0)
    assert 300 < int(member.sum()) < 500
    shuffled = torch.randperm(4000, generator=gen)
    assert torch.equal(data.release_members(x[shuffled], y[shuffled], 0.1, 0), member[shuffled])
    doubled = data.release_members(torch.cat([x, x]), torch.cat([y, y]), 0.1, 0)
    assert torch.equal(doubled[:4000], doubled[4000:])
    assert not torch.equal(data.release_members(x, (y + 1) % 10, 0.1, 0), member)
    assert not data.release_members(x, y, 0.0, 0).any()


@pytest.mark.integration
def test_release_split_is_one_for_every_window_and_outside_all_their_data(fashion_available, tmp_path):
    """The split promotion judges on is carved once per dataset: the same images whatever the window, the
    split seed or the stream's length, and none of them in any window's train or val split."""
    cfg = tiny_config(tmp_path).data.model_copy(update={"train_subset": None})
    raw = data.load_raw(cfg)
    windows = ["0:20000", "20000:60000", "10000:30000", "", "2026-11"]
    splits = [data.split_raw(raw, cfg.model_copy(update={"window": w})) for w in windows]
    splits.append(data.split_raw(raw, cfg.model_copy(update={"split_seed": 7, "val_size": 900})))
    release = splits[0][3]
    assert 2500 < len(release) < 3500  # ~5% of 60,000
    release_bytes = {bytes(x.numpy()) for x in release.x}
    for train, val, _test, rel in splits:
        assert torch.equal(rel.x, release.x) and torch.equal(rel.y, release.y)
        assert not any(bytes(x.numpy()) in release_bytes for x in torch.cat([train.x, val.x]))
    # a stream that grows keeps every earlier member (membership is by content, not position)
    short = data.RawData(raw.train_x[:30000], raw.train_y[:30000], raw.test_x, raw.test_y, raw.class_names, raw.source)
    early = data.split_raw(short, cfg.model_copy(update={"val_size": 100}))[3]
    assert {bytes(x.numpy()) for x in early.x} <= release_bytes and len(early) < len(release)
    # another release seed draws another split of the same size; 0 draws none
    other = data.split_raw(raw, cfg.model_copy(update={"release_seed": 1}))[3]
    assert not torch.equal(other.x[:100], release.x[:100]) and abs(len(other) - len(release)) < 300
    assert len(data.split_raw(raw, cfg.model_copy(update={"release_fraction": 0.0}))[3]) == 0


def _write_idx(path, array):
    import struct

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


@pytest.mark.unit
@pytest.mark.parametrize("split,images,labels", [("test", 20, 60), ("train", 30, 12)])
def test_label_count_must_match_image_count(tmp_path, split, images, labels):
    """10,000 labels beside 60,000 images used to be accepted and paired images with the wrong labels."""
    import numpy as np

    counts = {"train": (30, 30), "test": (20, 20)}
    counts[split] = (images, labels)
    for s, (n_img, n_lab) in counts.items():
        stem = "t10k" if s == "test" else "train"
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", np.zeros((n_img, 28, 28)))
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.arange(n_lab) % 10)
    cfg = build_config({"data": {"source": str(tmp_path), "val_size": 5}})
    with pytest.raises(
        DataError,
        match=rf"data.source: {'t10k' if split == 'test' else 'train'}-images.*"
        rf"{images} images but .*{labels} labels",
    ):
        data.prepare(cfg.data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
