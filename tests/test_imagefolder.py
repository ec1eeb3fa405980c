"""A user's own image folder (#26): mixed sizes, formats and modes, EXIF orientation, bad files, duplicates.

The trees are written by the tests (Pillow); nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from kdflow.cli import main
from kdflow.config import build_config
from kdflow.data import prepared as data
from kdflow.errors import DataError
from kdflow.infra.io import safe_torch_load

SIZES = [(17, 23), (64, 40), (300, 120), (33, 33), (48, 96), (120, 31)]


def _rgb(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _write_mixed_tree(root, per_class: int = 6) -> None:
    """Three classes; every image another size, and the classes spread over formats and modes."""
    savers = [
        ("png", lambda im: im),
        ("jpg", lambda im: im),
        ("webp", lambda im: im),
        ("bmp", lambda im: im),
        ("tiff", lambda im: im),
        ("gif", lambda im: im.convert("P")),
    ]
    modes = [
        lambda im: im,  # RGB
        lambda im: im.convert("L"),
        lambda im: im.convert("RGBA"),
        lambda im: im.convert("P"),
        lambda im: im.convert("1").convert("L"),
        lambda im: Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257),  # 16-bit
    ]
    for ci, c in enumerate(("ant", "bee", "cow")):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            w, h = SIZES[(i + ci) % len(SIZES)]
            ext, fmt = savers[(i + 2 * ci) % len(savers)]
            im = modes[(i + ci) % len(modes)](_rgb(w, h, 100 * ci + i))
            if ext in ("jpg", "bmp", "webp", "gif") and im.mode in ("I;16", "I"):
                im = im.convert("L") if ext != "jpg" else im.convert("RGB")  # formats without 16-bit
            if ext == "jpg" and im.mode in ("RGBA", "P"):
                im = im.convert("RGB")
            fmt(im).save(root / c / f"{i}.{ext}")
        _rgb(50, 70, 7).convert("CMYK").save(root / c / "cmyk.jpg")


def _cfg(root, **data_fields):
    return build_config({"data": {"dataset": "imagefolder", "source": str(root), "val_size": 3, **data_fields}})


@pytest.mark.unit
def test_a_tree_of_mixed_sizes_formats_and_modes_prepares_at_image_size(tmp_path):
    _write_mixed_tree(tmp_path / "imgs")
    m = data.prepare(_cfg(tmp_path / "imgs", image_size=32).data, tmp_path / "out")
    assert m["input_shape"] == [3, 32, 32] and m["class_names"] == ["ant", "bee", "cow"]
    assert sum(m["counts"].values()) == 21 and m["bad_files"] == [] and m["image_size"] == 32
    prepared = data.load_prepared(tmp_path / "out")
    assert prepared.train.x.dtype == torch.uint8 and prepared.train.x.shape[1:] == (3, 32, 32)
    grey = data.prepare(_cfg(tmp_path / "imgs", image_size=24, channels=1).data, tmp_path / "grey")
    assert grey["input_shape"] == [1, 24, 24] and len(grey["mean"]) == 1


@pytest.mark.unit
def test_exif_orientation_is_applied_before_the_center_crop(tmp_path):
    """A 40x20 photo stored sideways (EXIF orientation 6: rotate 90 degrees clockwise to display): its black
    left half is the top when displayed, and the resized, center-cropped image keeps it there."""
    a = np.full((20, 40), 255, dtype=np.uint8)
    a[:, :20] = 0
    for c in ("x", "y"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            exif = Image.Exif()
            exif[0x0112] = 6
            Image.fromarray(a, "L").save(tmp_path / "imgs" / c / f"{i}.jpg", exif=exif, quality=95)
    raw = data.load_raw(_cfg(tmp_path / "imgs", image_size=16, release_fraction=0.0).data)
    img = raw.train_x[0, 0].float()
    assert raw.train_x.shape[1:] == (1, 16, 16)
    assert img[:4].mean() < 40 and img[-4:].mean() > 215  # top black, bottom white
    assert abs(float(img[:, :4].mean() - img[:, -4:].mean())) < 20  # left and right alike


@pytest.mark.unit
def test_mixed_sizes_without_image_size_are_one_line_naming_the_fix(tmp_path):
    _write_mixed_tree(tmp_path / "imgs", per_class=2)
    with pytest.raises(DataError, match=r"^data.source: .*different sizes.*fix: set data.image_size") as e:
        data.prepare(_cfg(tmp_path / "imgs").data, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def _tree_with_bad_files(root) -> list[str]:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            _rgb(20, 20, i).save(root / c / f"{i}.png")
    (root / "a" / "cut.png").write_bytes((root / "a" / "0.png").read_bytes()[:40])  # truncated
    (root / "a" / "fake.jpg").write_bytes(b"this is no jpeg")  # not an image under an image name
    (root / "b" / "notes.txt").write_text("labels by hand")  # not an image at all
    (root / "b" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored, as every tool does
    return ["a/cut.png", "a/fake.jpg", "b/notes.txt"]


@pytest.mark.unit
def test_a_bad_file_stops_prep_in_one_line_unless_tolerated(tmp_path, capsys):
    bad = _tree_with_bad_files(tmp_path / "imgs")
    args = ["prep", "--out", str(tmp_path / "out"), "--set", "tracking.enabled=false"]
    args += [
        "--set",
        "data.dataset=imagefolder",
        "--set",
        f"data.source={tmp_path / 'imgs'}",
        "--set",
        "data.val_size=2",
    ]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdflow: error: data.source:") and "cut.png" in err[0], err
    assert "3 bad files" in err[0] and "data.max_bad_files" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert main([*args, "--set", "data.max_bad_files=2"]) == 2  # three is more than two
    assert main([*args, "--set", "data.max_bad_files=3"]) == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(b["file"] for b in m["bad_files"]) == bad and all(b["reason"] for b in m["bad_files"])
    assert sum(m["counts"].values()) == 16


@pytest.mark.unit
def test_an_empty_class_folder_is_one_line_even_when_bad_files_are_tolerated(tmp_path):
    _tree_with_bad_files(tmp_path / "imgs")
    (tmp_path / "imgs" / "c").mkdir()
    (tmp_path / "imgs" / "c" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"^data.source: class folder .*/c' has no readable image"):
        data.prepare(_cfg(tmp_path / "imgs", max_bad_files=10).data, tmp_path / "out")


@pytest.mark.unit
def test_byte_identical_images_across_train_and_test_are_reported(tmp_path):
    seeds = iter(range(100))  # every image distinct; hash() of a tuple changes per process
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(6):
                _rgb(12, 12, next(seeds)).save(tmp_path / "imgs" / split / c / f"{i}.png")
    leaked = tmp_path / "imgs" / "test" / "b" / "leak.png"
    leaked.write_bytes((tmp_path / "imgs" / "train" / "a" / "3.png").read_bytes())
    m = data.prepare(_cfg(tmp_path / "imgs").data, tmp_path / "out")
    assert m["test_duplicates_in_train"] == 1


@pytest.mark.integration
def test_every_step_runs_on_a_mixed_size_tree(tmp_path):
    """prep -> teacher -> scratch -> distill -> evaluate (`kdflow run --scratch`) and export, through the CLI,
    on a folder of photos of mixed sizes, formats and modes, its pixels on disk and read by a loader worker
    (the in-memory route is every other test's), trained on RandomResizedCrops of a larger stored image with
    the teacher's logits cached per crop box (FKD)."""
    _write_mixed_tree(tmp_path / "imgs", per_class=12)
    common = ["--profile", "smoke", "--set", "tracking.enabled=false", "--set", f"storage.state_dir={tmp_path / 's'}"]
    for kv in (
        "data.dataset=imagefolder",
        f"data.source={tmp_path / 'imgs'}",
        "data.image_size=32",
        "data.store_size=40",
        "data.train_crop=resized",
        "distill.cache=true",
        "data.channels=3",
        "data.storage=disk",
        "train.loader_workers=1",
        "data.val_size=4",
        "data.train_subset=null",
        "data.test_subset=null",
        "train.batch_size=8",
        "gate.max_latency_p95_ms=1000",
    ):
        common += ["--set", kv]
    run = tmp_path / "run"
    assert main(["run", "--scratch", "--out", str(run), *common]) == 0
    ev = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert set(ev["models"]) == {"teacher", "scratch", "student"} and ev["class_names"] == ["ant", "bee", "cow"]
    prepared = data.load_prepared(run / "data")
    assert ev["release_samples"] == len(prepared.release) and prepared.manifest["storage"] == "disk"
    assert prepared.train.x.shape[-1] == 40 and prepared.input_shape == (3, 32, 32)
    (cached,) = (tmp_path / "s" / "teacher_cache").glob("teacher-cache-*.pt")
    assert safe_torch_load(cached)["params"].shape[1:] == (len(prepared.train), 5)  # a crop box + flip per image
    args = ["export", "--data", str(run / "data"), "--student", str(run / "student")]
    args += ["--evaluation", str(run / "evaluation"), "--out", str(tmp_path / "export"), *common]
    assert main(args) == 0
    exported = json.loads((tmp_path / "export" / "export.json").read_text())
    assert exported["forms"]["onnx"]["top1_agreement"] >= 0.9
    onnx_file = sorted((tmp_path / "export").rglob("*.onnx"))[0]
    photo = next(f for f in sorted((tmp_path / "imgs" / "ant").iterdir()) if f.suffix == ".png")
    assert main(["predict", "--model", str(onnx_file), str(photo)]) == 0  # a raw photo, resized as prep did


@pytest.mark.integration
def test_tune_on_a_folder_refuses_an_unmeetable_budget_before_the_teacher(tmp_path):
    """An image folder's shape and classes are unknown before prep; the budget is checked as soon as prep has
    them, so a budget no student meets never costs a teacher's training (nor a pretrained teacher's fine-tune)."""
    from kdflow.errors import ConfigError
    from kdflow.tune import rounds
    from kdflow.tune.run import tune

    _write_mixed_tree(tmp_path / "tree")
    cfg = build_config(
        {
            "data": {"dataset": "imagefolder", "source": str(tmp_path / "tree"), "val_size": 3, "image_size": 32},
            "tracking": {"enabled": False},
            "storage": {"state_dir": str(tmp_path / "state")},
            "tune": {"max_params": 500, "space": {"students": ["cnn"]}},
        }
    )
    with pytest.raises(ConfigError, match="no student in the search space meets the budget"):
        tune(cfg, tmp_path / "study")
    assert (tmp_path / "study" / "data" / "manifest.json").is_file()
    assert not (tmp_path / "study" / "teacher").exists()
    # the cluster form (the autodistill DAG): nothing to check before prep, then its check step between prep
    # and the teacher refuses the same budget from the prepared folder
    rounds.check_cluster_form(cfg)
    with pytest.raises(ConfigError, match="no student in the search space meets the budget"):
        rounds.check_cluster_form(cfg, tmp_path / "study" / "data")
