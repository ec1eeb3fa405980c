"""Prepared datasets: carve the release and a seeded val split from the raw data, preload them as uint8
tensors, digest them.

A prepared dataset is a directory with one file per split, ``train.pt``, ``val.pt``, ``release.pt`` and
``test.pt``
(uint8 NCHW images and int64 labels, loadable with ``weights_only=True``; one file each so a step that
must not read the training images, data-free distillation, never opens them) and ``manifest.json`` (counts, class names, normalization,
sha256 digests). Val selects (epochs, recipes, students); release only decides (the gate, promotion; see
:mod:`kdflow.data.release_split`); test is reported. Raw loading lives in :mod:`kdflow.data.raw`, batching in :mod:`kdflow.data.batches`;
both are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kdflow.config import DataConfig
from kdflow.config.sections import FEATURE_DATASETS
from kdflow.data import features
from kdflow.data.batches import (
    Normalizer,
    Split,
    apply_augmentation,
    augment_batch,
    draw_augmentation,
    iterate,
    num_batches,
    shard,
    stream_seed,
)
from kdflow.data.pixels import EVAL_STORE_FILE, PixelWriter
from kdflow.data.raw import (
    DEBIAN_DIRS,
    FASHION_CLASSES,
    IDX_FILES,
    MNIST_CLASSES,
    NORMALIZATION,
    RawData,
    load_raw,
    read_idx,
    register_source_resolver,
    resolve_local,
)
from kdflow.data.release_split import release_members, shared_images
from kdflow.data.splits import split_raw, window_slice
from kdflow.data.storage import channel_stats, digest, eval_views, open_store, split_blob, split_from_blob, to_store
from kdflow.data.transfer_set import build_pool
from kdflow.data.transforms import resize_center_crop_batch, to_channels
from kdflow.errors import DataError
from kdflow.infra import step_manifest
from kdflow.infra.io import atomic_torch_save, atomic_write_json, safe_torch_load
from kdflow.infra.loaders import read_json_state

__all__ = [
    "DEBIAN_DIRS",
    "FASHION_CLASSES",
    "FEATURE_DATASETS",
    "IDX_FILES",
    "MNIST_CLASSES",
    "NORMALIZATION",
    "Normalizer",
    "PreparedData",
    "RawData",
    "Split",
    "apply_augmentation",
    "augment_batch",
    "augmentation_spec",
    "draw_augmentation",
    "iterate",
    "has_split",
    "load_manifest",
    "load_prepared",
    "load_split",
    "load_raw",
    "num_batches",
    "prepare",
    "read_idx",
    "register_source_resolver",
    "release_members",
    "shard",
    "split_raw",
    "stream_seed",
    "window_slice",
]


@dataclass
class PreparedData:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    manifest: dict
    release: Split | None = None  # None: a dataset made by hand without one (the release decision refuses it)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) a model takes: the evaluation splits' shape (train may be stored larger, data.store_size); (D,)
        for rows of named feature inputs."""
        return tuple(int(d) for d in self.test.x.shape[1:])

    @property
    def inputs(self) -> dict[str, dict] | None:
        """The named inputs of a feature dataset (name -> columns, shape); None for images (one input, ``image``)."""
        return self.manifest.get("inputs")

    @property
    def in_channels(self) -> int:
        return self.input_shape[0] if len(self.input_shape) == 3 else 1

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.input_shape[1], self.input_shape[2]) if len(self.input_shape) == 3 else (0, 0)

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, self.std, self.manifest.get("input_scale", 255.0))


def _normalization(cfg: DataConfig, train_x) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.mean``/``data.std`` when given (a pretrained teacher's), else the dataset's own."""
    if cfg.dataset in FEATURE_DATASETS:
        return features.stats(cfg, train_x)
    if cfg.mean is not None and cfg.std is not None:
        if len(cfg.mean) != int(train_x.shape[1]):
            raise DataError(
                "data.mean",
                f"{len(cfg.mean)} values for images of {int(train_x.shape[1])} channel(s)",
                "give one value per channel (or set data.channels)",
            )
        return tuple(cfg.mean), tuple(cfg.std)
    if cfg.dataset in NORMALIZATION:
        return NORMALIZATION[cfg.dataset]
    return channel_stats(train_x)


def _fitted(raw: RawData, cfg: DataConfig) -> RawData:
    """IDX and torchvision data at ``data.channels`` and ``data.image_size`` (an image folder is fitted image by
    image as it is read)."""
    if cfg.dataset == "imagefolder" or cfg.dataset in FEATURE_DATASETS:
        return raw
    xs = []
    for x in (raw.train_x, raw.test_x):
        assert isinstance(x, torch.Tensor)  # only an image folder is read straight to disk
        x = to_channels(x, cfg.channels)
        xs.append(resize_center_crop_batch(x, cfg.stored_size) if cfg.stored_size is not None else x)
    return RawData(xs[0], raw.train_y, xs[1], raw.test_y, raw.class_names, raw.source, raw.bad_files)


RELEASE_WARN = 500  # fewer release images than this: one image moves the gate's accuracy by > 0.2 pt


def prepare(cfg: DataConfig, out_dir: str | Path, cache_dir: Path | None = None) -> dict:
    """Load, split and save a dataset; returns the manifest. With pixels on disk (``data.storage``) the images
    are written to the store as they are decoded, and a failure removes it (nothing half-written)."""
    out = Path(out_dir)
    cache = cache_dir or Path(cfg.download_root)
    source = None
    if cfg.source and cfg.dataset == "imagefolder" and cfg.storage == "auto":  # sized before it is read
        source = resolve_local(cfg.source, "data.source", cache)
    store = open_store(cfg, out, source)
    try:
        manifest = _prepare(cfg, out, cache, store)
    except BaseException:
        if store is not None:
            store.abort()
            (out / EVAL_STORE_FILE).unlink(missing_ok=True)
        raise
    return manifest


def _prepare(cfg: DataConfig, out: Path, cache_dir: Path, store: PixelWriter | None) -> dict:
    raw = _fitted(load_raw(cfg, cache_dir, store), cfg)
    raw.train_x, raw.test_x = to_store(raw.train_x, store), to_store(raw.test_x, store)
    train, val, test, release = split_raw(raw, cfg)
    train, pool, pool_bad = build_pool(train, cfg, cache_dir, store)
    if cfg.stored_larger:  # evaluation shows the centre crop
        val, test, release = eval_views([val, test, release], int(cfg.image_size), out)  # type: ignore[arg-type]
    splits = {"train": train, "val": val, "test": test, "release": release}
    if len(pool):
        splits["unlabeled"] = pool
    if cfg.dataset in FEATURE_DATASETS:  # the inputs computed from the kept rows (text embeddings)
        splits = features.complete(cfg, splits, cache_dir)
        train, val, test, release = (splits[n] for n in ("train", "val", "test", "release"))
    mean, std = _normalization(cfg, train.x)
    class_names = raw.class_names or [str(i) for i in range(int(raw.train_y.max()) + 1)]
    manifest = {
        "dataset": cfg.dataset,
        "source": raw.source,
        "window": cfg.window,
        "source_digest": digest(raw.train_x, raw.train_y, raw.test_x, raw.test_y),
        "digest": digest(*(t for sp in splits.values() for t in (sp.x, sp.y))),
        "test_digest": digest(test.x, test.y),
        "release_digest": digest(release.x, release.y),
        "split_seed": cfg.split_seed,
        "release_fraction": cfg.release_fraction,
        "release_seed": cfg.release_seed,
        "counts": {name: len(sp) for name, sp in splits.items()},
        "class_names": class_names,
        "num_classes": len(class_names),
        "input_shape": list(test.x.shape[1:]),
        "mean": list(mean),
        "std": list(std),
        "augmentation": augmentation_spec(cfg),
        "image_size": cfg.image_size,
        "store_size": cfg.stored_size,
        "storage": "disk" if store is not None else "memory",
        "bad_files": raw.bad_files + pool_bad,
        "test_duplicates_in_train": shared_images(raw.test_x, raw.train_x),
    }
    if cfg.dataset in FEATURE_DATASETS:  # rows of named inputs, normalised per column on their own scale
        manifest.update(inputs=features.inputs(cfg), input_scale=1.0)
    unit = "rows" if cfg.dataset in FEATURE_DATASETS else "images"  # a gloss or a feature vector is no image
    if len(release) < RELEASE_WARN:
        print(
            f"[prep] warning: the release split holds {len(release)} {unit}; the gate's accuracy and promotion's "
            f"paired test on so few are noisy (raise data.release_fraction, now {cfg.release_fraction})"
        )
    if manifest["test_duplicates_in_train"]:
        print(
            f"[prep] {manifest['test_duplicates_in_train']} test {unit} are byte-identical to a train {unit[:-1]} "
            "(test accuracy is optimistic by them; listed as test_duplicates_in_train in manifest.json)"
        )
    if store is not None:
        store.finish()
    for name, sp in splits.items():
        atomic_torch_save(split_blob(sp), out / SPLIT_FILES[name])
    atomic_write_json(out / "manifest.json", manifest)  # last: a directory with a manifest is complete
    return manifest


def augmentation_spec(cfg: DataConfig) -> dict:
    """The train view (:mod:`kdflow.data.views`); the keys of the default pad crop stay as they always were, so
    its caches and digests stay valid."""
    if cfg.dataset in FEATURE_DATASETS:  # crops and flips are image views; feature rows are shown as they are
        return {"enabled": False, "crop_padding": 0, "hflip": False}
    spec: dict = {
        "enabled": cfg.augment,
        "crop_padding": cfg.crop_padding if cfg.augment and cfg.train_crop == "pad" else 0,
        "hflip": cfg.hflip and cfg.augment,
    }
    if cfg.train_crop == "resized":
        spec.update(crop="resized", scale=list(cfg.crop_scale), ratio=list(cfg.crop_ratio))
    if cfg.stored_larger:
        spec["size"] = cfg.image_size
    return spec


SPLIT_FILES = {
    "train": "train.pt",
    "val": "val.pt",
    "test": "test.pt",
    "release": "release.pt",
    "unlabeled": "unlabeled.pt",
}


def load_manifest(directory: str | Path) -> dict:
    d = Path(directory)
    if not (d / "manifest.json").is_file():
        raise DataError("--data", f"'{d}' is not a prepared dataset (no manifest.json)", "run `kdflow prep` first")
    return read_json_state(d / "manifest.json", "--data", "prepare the data again with `kdflow prep`")


def has_split(directory: str | Path, name: str) -> bool:
    return (Path(directory) / SPLIT_FILES[name]).is_file()


def load_split(directory: str | Path, name: str) -> Split:
    """One split of a prepared dataset; the other splits' files are not opened."""
    path = Path(directory) / SPLIT_FILES[name]
    if not path.is_file():
        raise DataError(
            "dataset", f"'{path}' is missing (the {name} split)", "run `kdflow prep` again into a fresh --out"
        )
    return split_from_blob(safe_torch_load(path, field="dataset"), Path(directory), path)


def load_prepared(directory: str | Path) -> PreparedData:
    """The prepared splits; a directory the prep step wrote is checked against its step manifest first (never
    finished, or a split changed since: refused). One made by hand (no step manifest) is read as it is."""
    d = Path(directory)
    step_manifest.verify(d, ("prep_data",), "--data", required=False)
    manifest = load_manifest(d)
    splits = {s: load_split(d, s) for s in ("train", "val", "test")}
    return PreparedData(
        splits["train"],
        splits["val"],
        splits["test"],
        manifest["class_names"],
        tuple(manifest["mean"]),
        tuple(manifest["std"]),
        manifest,
        load_split(d, "release") if has_split(d, "release") or "release" in manifest.get("counts", {}) else None,
    )  # the unlabeled pool is not loaded here: only the distill step reads it (load_split(d, "unlabeled"))
