"""Train views at real resolution (#26): RandomResizedCrop from a larger stored image, the evaluation centre
crop, and a teacher cache that stores each view's crop box so the student sees exactly the teacher's image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from kdflow.config import build_config
from kdflow.data import cache, pixels, views
from kdflow.data import prepared as data
from kdflow.errors import ConfigError


@pytest.mark.unit
def test_resized_crop_boxes_follow_torchvisions_rule():
    gen = torch.Generator().manual_seed(0)
    p = views.draw_resized_crops(4000, (48, 64), (0.2, 0.9), (0.75, 4 / 3), True, gen)
    top, left, h, w, flip = p.unbind(1)
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= 48).all() and (left + w <= 64).all())
    share, ratio = (h * w).float() / (48 * 64), w.float() / h.float()
    assert 0.18 <= float(share.min()) and float(share.max()) <= 0.92  # rounding moves a box by a pixel
    assert 0.7 <= float(ratio.min()) and float(ratio.max()) <= 1.4
    torch.manual_seed(0)  # torchvision's own sampler (global RNG): the same distribution of areas
    ref = [RandomResizedCrop.get_params(torch.empty(1, 48, 64), [0.2, 0.9], [0.75, 4 / 3]) for _ in range(4000)]
    ref_share = sum(b[2] * b[3] for b in ref) / (4000 * 48 * 64)
    assert 0.45 < float(flip.float().mean()) < 0.55 and float(share.mean()) == pytest.approx(ref_share, abs=0.02)
    again = views.draw_resized_crops(4000, (48, 64), (0.2, 0.9), (0.75, 4 / 3), True, torch.Generator().manual_seed(0))
    assert torch.equal(p, again)


@pytest.mark.unit
def test_a_box_that_never_fits_falls_back_to_the_centred_box_of_an_allowed_ratio():
    p = views.draw_resized_crops(5, (40, 40), (1.0, 1.0), (1.5, 2.0), False, torch.Generator().manual_seed(1))
    assert p.tolist() == [[6, 0, 27, 40, 0]] * 5  # full width, height 40 / 1.5, centred


@pytest.mark.unit
def test_resized_crops_match_torchvisions_resized_crop():
    x = torch.randint(0, 256, (3, 3, 50, 70), dtype=torch.uint8)
    p = torch.tensor([[3, 5, 30, 41, 0], [0, 0, 50, 70, 1], [10, 20, 16, 16, 0]])
    out = views.apply_resized_crops(x, p, 24)
    for k, (t, left, h, w, flip) in enumerate(p.tolist()):
        ref = TF.resized_crop(x[k].float(), t, left, h, w, [24, 24], antialias=True).round().clamp(0, 255)
        ref = ref.flip(-1) if flip else ref
        assert (out[k].float() - ref).abs().max() <= 1


@pytest.mark.unit
def test_evaluation_sees_the_centre_and_training_the_model_size():
    x = torch.arange(2 * 1 * 10 * 10, dtype=torch.uint8).view(2, 1, 10, 10)
    split = data.Split(x, torch.tensor([0, 1]))
    norm = data.Normalizer((0.0,), (1 / 255,))
    spec = {"enabled": True, "crop_padding": 0, "hflip": True, "crop": "resized", "scale": [0.3, 1.0]}
    spec |= {"ratio": [0.75, 1.33], "size": 6}
    ((xb, _, _),) = data.iterate(split, 2, norm)  # no spec: the stored image
    assert xb.shape[-1] == 10
    ((xb, _, _),) = data.iterate(split, 2, norm, augment={"enabled": False, "size": 6})
    assert torch.equal(xb, x[:, :, 2:8, 2:8].float())
    ((xb, _, _),) = data.iterate(split, 2, norm, augment=spec, shuffle=True, seed=3)
    assert xb.shape == (2, 1, 6, 6)


def _tree(root, n=8) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(30, 90, 2))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def _cfg(root, **fields):
    raw = {"dataset": "imagefolder", "source": str(root), "image_size": 16, "store_size": 24, "channels": 3}
    raw |= {"val_size": 2, "release_fraction": 0.2, "train_crop": "resized", **fields}
    return build_config({"data": raw}).data


@pytest.mark.unit
def test_prep_stores_train_larger_and_the_evaluation_splits_at_the_model_size(tmp_path):
    _tree(tmp_path / "imgs")
    mem = data.prepare(_cfg(tmp_path / "imgs", storage="memory"), tmp_path / "mem")
    disk = data.prepare(_cfg(tmp_path / "imgs", storage="disk"), tmp_path / "disk")
    assert mem["digest"] == disk["digest"] and mem["input_shape"] == [3, 16, 16] and mem["store_size"] == 24
    assert mem["augmentation"] == {
        "enabled": True,
        "crop_padding": 0,
        "hflip": True,
        "crop": "resized",
        "scale": [0.25, 1.0],
        "ratio": [0.75, 4 / 3],
        "size": 16,
    }
    d = data.load_prepared(tmp_path / "disk")
    assert d.train.x.shape[1:] == (3, 24, 24) and d.input_shape == (3, 16, 16) and d.image_size == (16, 16)
    assert isinstance(d.test.x, pixels.DiskImages) and d.test.x.path.name == pixels.EVAL_STORE_FILE
    m = data.load_prepared(tmp_path / "mem")
    for name in ("val", "test", "release"):
        assert torch.equal(getattr(m, name).x, getattr(d, name).x[:])


@pytest.mark.unit
def test_the_default_pad_crop_keeps_its_spec():
    spec = data.augmentation_spec(build_config({}).data)
    assert spec == {"enabled": True, "crop_padding": 2, "hflip": True}  # caches and digests of old runs stay valid


@pytest.mark.unit
@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"store_size": 24, "image_size": None}, "data.store_size"),
        ({"store_size": 12, "image_size": 16}, "data.store_size"),
        ({"crop_scale": [0.5, 0.2]}, "data.crop_scale"),
        ({"crop_ratio": [0, 1]}, "data.crop_ratio"),
    ],
)
def test_bad_crop_settings_are_one_line(fields, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        build_config({"data": fields})
    assert e.value.field == needle and "\n" not in str(e.value)


class _MeanTeacher(torch.nn.Module):
    """Logits that depend on every pixel of the view (a crop or flip changes them)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3 * 16 * 16, 2))

    def forward(self, x):
        return x.flatten(1) @ self.w / 100


@pytest.mark.unit
def test_a_teacher_cache_of_resized_crops_replays_the_teachers_exact_views(tmp_path):
    _tree(tmp_path / "imgs", n=10)
    data.prepare(_cfg(tmp_path / "imgs", storage="disk"), tmp_path / "d")
    d = data.load_prepared(tmp_path / "d")
    teacher = _MeanTeacher().eval()
    key = cache.cache_key("sha", d, views=2, seed=4)
    tc = cache.build(teacher, d, key)
    assert tc.params.shape == (2, len(d.train), 5)  # a crop box and a flip per view and image
    for epoch in (0, 1):
        batches = data.iterate(
            d.train,
            4,
            d.normalizer(),
            shuffle=True,
            augment=d.manifest["augmentation"],
            seed=epoch,
            views=tc.params_for_epoch(epoch),
        )
        for xb, _, idx in batches:
            assert xb.shape[1:] == (3, 16, 16)
            with torch.no_grad():
                live = teacher(xb)
            assert torch.allclose(live, tc.logits_for(idx, epoch), atol=2e-2, rtol=1e-2)
    assert not math.isclose(float(tc.logits[0].sum()), float(tc.logits[1].sum()))  # the two views differ


@pytest.mark.unit
def test_predict_sees_a_raw_photo_as_evaluation_saw_it(tmp_path):
    """Train/serve parity: the export manifest records prep's evaluation transform and predict applies it, so a
    photo of any size gives exactly the pixels of its row in the prepared test split."""
    from kdflow.release.export import preprocess_spec
    from kdflow.release.predict import load_images

    for split in ("train", "test"):
        _tree(tmp_path / "imgs" / split, n=3)
    cfg = _cfg(tmp_path / "imgs", storage="memory", val_size=1, release_fraction=0.0)
    manifest = data.prepare(cfg, tmp_path / "d")
    spec = preprocess_spec(manifest)
    assert spec == {"resize_shorter": 24, "center_crop": 16}
    files = [str(f) for c in ("a", "b") for f in sorted((tmp_path / "imgs" / "test" / c).iterdir())]
    served = load_images(files, manifest["input_shape"], spec)
    assert np.array_equal(served, data.load_split(tmp_path / "d", "test").x.numpy().astype(np.float32))
    assert preprocess_spec(build_config({}).data.model_dump() | {"image_size": None}) is None  # IDX as it is


@pytest.mark.unit
def test_a_pretrained_teachers_normalisation_can_be_given(tmp_path):
    _tree(tmp_path / "imgs")
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    m = data.prepare(_cfg(tmp_path / "imgs", **imagenet), tmp_path / "given")
    assert (m["mean"], m["std"]) == (imagenet["mean"], imagenet["std"])
    own = data.prepare(_cfg(tmp_path / "imgs"), tmp_path / "own")
    assert own["mean"] != imagenet["mean"] and own["digest"] == m["digest"]  # pixels alike, statistics not
    with pytest.raises(ConfigError, match="data.mean"):
        build_config({"data": {"mean": [0.5]}})  # without std
    with pytest.raises(ConfigError, match="data.mean"):
        build_config({"data": {"mean": [0.5], "std": [0.2], "channels": 3}})
