"""Datasets: resolve the raw files, carve a seeded val split, preload as uint8 tensors, batch fast.

Resolution order for the raw data: ``data.source`` (a path, or a URI whose scheme a storage layer
registered with :func:`register_source_resolver`), then the Debian dataset package, then a
torchvision download into ``data.download_root``.

A prepared dataset is a directory with ``data.pt`` (uint8 NCHW images, int64 labels per split,
loadable with ``weights_only=True``) and ``manifest.json`` (counts, class names, normalization,
sha256 digests).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdflow.config import DataConfig
from kdflow.errors import DataError
from kdflow.io import atomic_torch_save, atomic_write_json, read_json, safe_torch_load

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

NORMALIZATION = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

DEBIAN_DIRS = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [Path("/usr/share/datasets/mnist")],
}

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

_SOURCE_RESOLVERS: dict[str, Callable[[str, Path], Path]] = {}


def register_source_resolver(scheme: str, resolver: Callable[[str, Path], Path]) -> None:
    """Let a storage layer turn ``scheme://...`` into a local directory (downloaded and verified)."""
    _SOURCE_RESOLVERS[scheme] = resolver


@dataclass
class Split:
    x: torch.Tensor  # uint8, N x C x H x W
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class PreparedData:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    manifest: dict

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.x.shape[2]), int(self.train.x.shape[3])

    @property
    def digest(self) -> str:
        return self.manifest["digest"]


# ----------------------------------------------------------------------------- IDX parsing


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped); a truncated or corrupt file is a DataError."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError("data.source", f"IDX file '{path}' is truncated or corrupt ({type(e).__name__})",
                        "re-install the dataset package (apt-get install --reinstall dataset-fashion-mnist) or re-copy the file") from None
    if len(raw) < 4:
        raise DataError("data.source", f"IDX file '{path}' is truncated (no header)", "re-copy the file")
    zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise DataError("data.source", f"'{path}' is not an unsigned-byte IDX file", "point data.source at the IDX files")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError("data.source", f"IDX file '{path}' is truncated (header)", "re-copy the file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError("data.source", f"IDX file '{path}' is truncated or corrupt: {len(raw) - header} bytes for shape {dims}",
                        "re-install the dataset package or re-copy the file")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        for cand in (directory / name, directory / "raw" / name):
            if cand.is_file():
                return cand
    return None


def _load_idx_dir(directory: Path) -> dict[str, np.ndarray] | None:
    paths = {k: _find_idx(directory, v) for k, v in IDX_FILES.items()}
    if not all(paths.values()):
        return None
    return {k: read_idx(p) for k, p in paths.items()}  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- raw loading


@dataclass
class RawData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    source: str


def _nchw(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, copy=True))
    if t.dim() == 3:  # N H W -> N 1 H W
        t = t.unsqueeze(1)
    return t.to(torch.uint8).contiguous()


def _from_idx(arrays: dict[str, np.ndarray], classes: list[str], source: str) -> RawData:
    return RawData(_nchw(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64)),
                   _nchw(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64)), classes, source)


def _torchvision_download(cfg: DataConfig) -> RawData:
    import torchvision.datasets as tvd

    root = Path(cfg.download_root)
    cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[cfg.dataset]
    try:
        tr = _try_torchvision(cls, root, train=True)
        te = _try_torchvision(cls, root, train=False)
    except Exception as e:  # noqa: BLE001 - network and format errors of many kinds
        raise DataError("data.source", f"no local copy of {cfg.dataset} and the torchvision download failed ({type(e).__name__})",
                        "install the Debian package dataset-fashion-mnist or set data.source to a directory with the data") from None
    if cfg.dataset == "cifar10":
        tx = torch.from_numpy(tr.data).permute(0, 3, 1, 2).contiguous()
        ex = torch.from_numpy(te.data).permute(0, 3, 1, 2).contiguous()
        return RawData(tx, torch.tensor(tr.targets), ex, torch.tensor(te.targets), list(tr.classes), f"torchvision:{root}")
    return RawData(tr.data.unsqueeze(1).contiguous(), tr.targets.long(), te.data.unsqueeze(1).contiguous(),
                   te.targets.long(), list(tr.classes), f"torchvision:{root}")


def _try_torchvision(cls, root: Path, train: bool):
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        return cls(str(root), train=train, download=True)


def _load_imagefolder(directory: Path, split_seed: int) -> RawData:
    from PIL import Image

    def load_tree(root: Path) -> tuple[list[np.ndarray], list[int], list[str]]:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not classes:
            raise DataError("data.source", f"'{root}' has no class sub-directories", "lay images out as ROOT/<class>/<image>.png")
        xs, ys = [], []
        for ci, c in enumerate(classes):
            for f in sorted((root / c).iterdir()):
                if f.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp"}:
                    continue
                img = np.asarray(Image.open(f))
                xs.append(img)
                ys.append(ci)
        return xs, ys, classes

    def stack(xs: list[np.ndarray], where: Path) -> torch.Tensor:
        shapes = {x.shape for x in xs}
        if len(shapes) != 1:
            raise DataError("data.source", f"images under '{where}' have different shapes {sorted(shapes)[:3]}",
                            "resize all images to one size first")
        a = np.stack(xs)
        return _nchw(a) if a.ndim == 3 else torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()

    if (directory / "train").is_dir() and (directory / "test").is_dir():
        trx, try_, classes = load_tree(directory / "train")
        tex, tey, _ = load_tree(directory / "test")
        return RawData(stack(trx, directory), torch.tensor(try_), stack(tex, directory), torch.tensor(tey), classes, str(directory))
    xs, ys, classes = load_tree(directory)
    x, y = stack(xs, directory), torch.tensor(ys)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed + 7))
    n_test = max(1, len(y) // 5)
    te, tr = perm[:n_test], perm[n_test:]
    return RawData(x[tr], y[tr], x[te], y[te], classes, str(directory))


def load_raw(cfg: DataConfig, cache_dir: Path | None = None) -> RawData:
    classes = {"fashion-mnist": FASHION_CLASSES, "mnist": MNIST_CLASSES}.get(cfg.dataset, [])
    if cfg.source:
        scheme = cfg.source.split("://", 1)[0] if "://" in cfg.source else ""
        if scheme:
            if scheme not in _SOURCE_RESOLVERS:
                raise DataError("data.source", f"unsupported URI scheme '{scheme}://'", "use a local path or an s3:// URI")
            local = _SOURCE_RESOLVERS[scheme](cfg.source, cache_dir or Path(cfg.download_root))
        else:
            local = Path(cfg.source)
        if not local.exists():
            raise DataError("data.source", f"directory '{cfg.source}' does not exist", "point data.source at the raw data directory")
        if cfg.dataset == "imagefolder":
            return _load_imagefolder(local, cfg.split_seed)
        if cfg.dataset == "cifar10":
            raise DataError("data.source", "an explicit cifar10 source is not supported", "leave data.source empty for cifar10")
        arrays = _load_idx_dir(local)
        if arrays is None:
            raise DataError("data.source", f"'{cfg.source}' lacks the four IDX files ({', '.join(IDX_FILES.values())}[.gz])",
                            "point data.source at a directory holding them")
        return _from_idx(arrays, classes, cfg.source)
    if cfg.dataset == "imagefolder":
        raise DataError("data.source", "imagefolder needs a directory", "set data.source to ROOT with ROOT/<class>/<image>")
    for d in DEBIAN_DIRS.get(cfg.dataset, []):
        if d.is_dir():
            arrays = _load_idx_dir(d)
            if arrays is not None:
                return _from_idx(arrays, classes, f"debian:{d}")
    return _torchvision_download(cfg)


# ----------------------------------------------------------------------------- prepare / load


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _normalization(dataset: str, train_x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if dataset in NORMALIZATION:
        return NORMALIZATION[dataset]
    x = train_x.float() / 255.0
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def window_slice(window: str, n: int) -> slice | None:
    """'START:END' selects raw train samples [START, END) (a time window of a growing stream); other text is a label."""
    m = re.fullmatch(r"(\d*):(\d*)", window.strip())
    if not m:
        return None
    start = int(m.group(1) or 0)
    end = int(m.group(2) or n)
    if not 0 <= start < end <= n:
        raise DataError("data.window", f"window '{window}' is outside the {n} train samples",
                        f"use START:END with 0 <= START < END <= {n}")
    return slice(start, end)


def split_raw(raw: RawData, cfg: DataConfig) -> tuple[Split, Split, Split]:
    window = window_slice(cfg.window, len(raw.train_y))
    if window is not None:
        raw = RawData(raw.train_x[window], raw.train_y[window], raw.test_x, raw.test_y, raw.class_names, raw.source)
    n = len(raw.train_y)
    if cfg.val_size >= n:
        raise DataError("data.val_size", f"{cfg.val_size} is not smaller than the {n} train samples", "lower data.val_size")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, train_idx = perm[: cfg.val_size], perm[cfg.val_size:]
    if cfg.train_subset is not None:
        train_idx = train_idx[: cfg.train_subset]
    test = Split(raw.test_x, raw.test_y)
    if cfg.test_subset is not None:
        test = Split(raw.test_x[: cfg.test_subset], raw.test_y[: cfg.test_subset])
    val_idx, train_idx = val_idx.sort().values, train_idx.sort().values
    return Split(raw.train_x[train_idx], raw.train_y[train_idx]), Split(raw.train_x[val_idx], raw.train_y[val_idx]), test


def prepare(cfg: DataConfig, out_dir: str | Path, cache_dir: Path | None = None) -> dict:
    """Load, split and save a dataset; returns the manifest."""
    raw = load_raw(cfg, cache_dir)
    train, val, test = split_raw(raw, cfg)
    mean, std = _normalization(cfg.dataset, train.x)
    class_names = raw.class_names or [str(i) for i in range(int(raw.train_y.max()) + 1)]
    manifest = {
        "dataset": cfg.dataset,
        "source": raw.source,
        "window": cfg.window,
        "source_digest": _digest(raw.train_x, raw.train_y, raw.test_x, raw.test_y),
        "digest": _digest(train.x, train.y, val.x, val.y, test.x, test.y),
        "test_digest": _digest(test.x, test.y),
        "split_seed": cfg.split_seed,
        "counts": {"train": len(train), "val": len(val), "test": len(test)},
        "class_names": class_names,
        "num_classes": len(class_names),
        "input_shape": list(train.x.shape[1:]),
        "mean": list(mean),
        "std": list(std),
        "augmentation": augmentation_spec(cfg),
    }
    out = Path(out_dir)
    splits = {"train": train, "val": val, "test": test}
    blob = {f"{name}_{k}": getattr(sp, k).contiguous() for name, sp in splits.items() for k in ("x", "y")}
    atomic_torch_save(blob, out / "data.pt")
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def augmentation_spec(cfg: DataConfig) -> dict:
    return {"enabled": cfg.augment, "crop_padding": cfg.crop_padding if cfg.augment else 0,
            "hflip": cfg.hflip and cfg.augment}


def load_prepared(directory: str | Path) -> PreparedData:
    d = Path(directory)
    if not (d / "manifest.json").is_file():
        raise DataError("dataset", f"'{d}' is not a prepared dataset (no manifest.json)", "run `kdflow prep` first")
    manifest = read_json(d / "manifest.json")
    blob = safe_torch_load(d / "data.pt", field="dataset")
    splits = {s: Split(blob[f"{s}_x"], blob[f"{s}_y"]) for s in ("train", "val", "test")}
    return PreparedData(splits["train"], splits["val"], splits["test"], manifest["class_names"],
                        tuple(manifest["mean"]), tuple(manifest["std"]), manifest)


# ----------------------------------------------------------------------------- batching


def draw_augmentation(b: int, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-sample augmentation parameters (row offset, column offset, flip) as a (b, 3) int tensor."""
    i = torch.randint(0, 2 * padding + 1, (b,), generator=gen) if padding > 0 else torch.zeros(b, dtype=torch.long)
    j = torch.randint(0, 2 * padding + 1, (b,), generator=gen) if padding > 0 else torch.zeros(b, dtype=torch.long)
    flip = (torch.rand(b, generator=gen) < 0.5).long() if hflip else torch.zeros(b, dtype=torch.long)
    return torch.stack([i, j, flip], dim=1)


def apply_augmentation(x: torch.Tensor, params: torch.Tensor, padding: int) -> torch.Tensor:
    """RandomCrop(padding) + horizontal flip of a uint8 batch with explicit per-sample parameters."""
    b, c, h, w = x.shape
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        rows = (params[:, 0, None] + torch.arange(h))[:, None, :, None]
        cols = (params[:, 1, None] + torch.arange(w))[:, None, None, :]
        x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = params[:, 2].bool()
    if flip.any():
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def augment_batch(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(padding) + RandomHorizontalFlip on a uint8 batch, vectorised, driven by ``gen``."""
    return apply_augmentation(x, draw_augmentation(len(x), padding, hflip, gen), padding)


class Normalizer:
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std).view(1, -1, 1, 1) * 255.0)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() - self.mean) * self.inv_std


def shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """DistributedSampler's rule: pad by wrapping to a multiple of world, then take every world-th index."""
    n = len(order)
    per = -(-n // world)
    padded = torch.cat([order, order[: per * world - n]]) if per * world > n else order
    return padded[rank::world]


def iterate(split: Split, batch_size: int, normalizer: Normalizer, *, shuffle: bool = False,
            augment: dict | None = None, seed: int = 0, drop_last: bool = False, rank: int = 0, world: int = 1,
            views: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (normalized float batch, labels, sample indices). Same seed -> same batches.

    With ``world > 1`` every rank draws the same permutation and keeps its shard; augmentation then
    uses a per-rank stream so ranks do not share crop offsets. ``views`` (N x 3 per-sample augmentation
    parameters, e.g. from a teacher cache) replaces the random augmentation: each sample gets exactly
    the view stored for it.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=gen) if shuffle else torch.arange(len(split))
    if world > 1:
        order = shard(order, rank, world)
        gen = torch.Generator().manual_seed(seed * 7919 + rank + 1)
    n = len(order)
    stop = n - (n % batch_size) if drop_last and n > batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start: start + batch_size]
        xb = split.x[idx]
        if views is not None:
            xb = apply_augmentation(xb, views[idx], augment.get("crop_padding", 0) if augment else 0)
        elif augment and augment.get("enabled"):
            xb = augment_batch(xb, augment.get("crop_padding", 0), augment.get("hflip", False), gen)
        yield normalizer(xb), split.y[idx], idx


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    if drop_last and n > batch_size:
        return n // batch_size
    return (n + batch_size - 1) // batch_size
