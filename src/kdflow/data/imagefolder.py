"""A user's own image folder: ROOT/<class>/<image> (or ROOT/train/... and ROOT/test/...), any mix of sizes,
formats and modes.

Every file goes through the guarded image loader (EXIF orientation, 16-bit, palette, alpha, CMYK by mode),
then to ``data.channels`` and, with ``data.image_size``, the evaluation transform (shorter side resized,
center crop), so the prepared splits are one uint8 tensor each. A file that cannot be read (corrupt,
truncated, not an image) stops prep with one line naming it, before anything is written, unless
``data.max_bad_files`` tolerates it: the tolerated files are listed in the manifest (and so in MLflow).
Hidden files (``.DS_Store``, ``._x.jpg``) are skipped, as every image tool does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdflow.config import DataConfig
from kdflow.data.decode import decode_files
from kdflow.data.pixels import DiskImages, PixelWriter, take
from kdflow.data.transforms import resize_center_crop
from kdflow.errors import DataError
from kdflow.infra.loaders import read_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


@dataclass
class Tree:
    """The images of one tree, read and fitted, and the files that could not be read."""

    images: list[np.ndarray] = field(default_factory=list)  # uint8 (C, H, W), in memory
    rows: list[int] = field(default_factory=list)  # or their rows in the pixel store (data.storage: disk)
    labels: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)  # {"file": relative path, "reason": ...}


def read_file(
    f: Path, rel: str, channels: int | None, size: int | None, field: str, bad: list[dict[str, str]]
) -> np.ndarray | None:
    """One image as uint8 (C, H, W), resized and center-cropped to ``size`` when given; None, with the reason
    appended to ``bad``, for a file that is not a readable image (also used for the unlabeled pool)."""
    if f.suffix.lower() not in IMAGE_SUFFIXES:
        bad.append({"file": rel, "reason": f"not an image file (suffix '{f.suffix}')"})
        return None
    try:
        img = read_image(f, channels, field)
    except DataError as e:
        bad.append({"file": rel, "reason": e.problem})
        return None
    if size is not None:
        return resize_center_crop(img, size)
    return np.rint(img).clip(0, 255).astype(np.uint8)


def check_bad(bad: list[dict[str, str]], max_bad: int, field: str, root: Path, prefix: str = "") -> None:
    """More unreadable files than ``data.max_bad_files``: one line naming the first and the count."""
    if len(bad) > max_bad:
        first = bad[0]
        raise DataError(
            field,
            f"'{root / first['file'].removeprefix(prefix)}': {first['reason']} ({len(bad)} bad files; "
            f"data.max_bad_files={max_bad})",
            "remove or repair it, or set data.max_bad_files to tolerate and list them",
        )


def _files(class_dir: Path) -> list[Path]:
    return sorted(f for f in class_dir.iterdir() if f.is_file() and not f.name.startswith("."))


def read_tree(root: Path, cfg: DataConfig, base: Path, store: PixelWriter | None = None) -> Tree:
    tree = Tree(classes=sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not tree.classes:
        raise DataError(
            "data.source", f"'{root}' has no class sub-directories", "lay images out as ROOT/<class>/<image>.png"
        )
    files = [(ci, f) for ci, c in enumerate(tree.classes) for f in _files(root / c)]
    jobs = [(f, str(f.relative_to(base)), cfg.channels, cfg.stored_size, "data.source") for _, f in files]
    read = [0] * len(tree.classes)
    for (ci, _), (img, bad) in zip(files, decode_files(jobs), strict=True):
        tree.bad.extend(bad)
        if img is not None:
            if store is not None:
                tree.rows.append(store.append(img))
            else:
                tree.images.append(img)
            tree.labels.append(ci)
            read[ci] += 1
    for ci, c in enumerate(tree.classes):
        if read[ci] == 0:
            raise DataError(
                "data.source",
                f"class folder '{root / c}' has no readable image",
                "add images to it or remove the folder",
            )
    return tree


def _stack(images: list[np.ndarray], where: Path) -> torch.Tensor:
    shapes = sorted({x.shape for x in images})
    if len(shapes) != 1:
        channels = sorted({s[0] for s in shapes})
        if len(channels) > 1 and len({s[1:] for s in shapes}) == 1:
            raise DataError(
                "data.source",
                f"images under '{where}' mix grey and colour ({channels} channels)",
                "set data.channels to 1 or 3",
            )
        raise DataError(
            "data.source",
            f"images under '{where}' have different sizes ({', '.join('x'.join(map(str, s[1:])) for s in shapes[:3])}, ...)",
            "set data.image_size (e.g. 64) to resize and center-crop each image to one size",
        )
    return torch.from_numpy(np.stack(images)).contiguous()  # N C H W, uint8


def _unify_channels(trees: list[Tree], cfg: DataConfig) -> None:
    """``data.channels`` unset: grey stays grey only when every image is grey; otherwise all become RGB."""
    if cfg.channels is not None:
        return
    if any(img.shape[0] == 3 for t in trees for img in t.images):
        for t in trees:
            t.images = [np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img for img in t.images]


@dataclass
class FolderData:
    train_x: torch.Tensor | DiskImages
    train_y: torch.Tensor
    test_x: torch.Tensor | DiskImages
    test_y: torch.Tensor
    classes: list[str]
    bad_files: list[dict[str, str]]


def load_imagefolder(directory: Path, cfg: DataConfig, store: PixelWriter | None = None) -> FolderData:
    """ROOT/train + ROOT/test when both exist; otherwise one tree with a seeded fifth held out as test. With a
    ``store`` (data.storage: disk) every image is written to it as it is read and the splits are its rows."""

    def images(tree: Tree) -> torch.Tensor | DiskImages:
        return (
            store.images(torch.tensor(tree.rows, dtype=torch.long))
            if store is not None
            else _stack(tree.images, directory)
        )

    if (directory / "train").is_dir() and (directory / "test").is_dir():
        train = read_tree(directory / "train", cfg, directory, store)
        test = read_tree(directory / "test", cfg, directory, store)
        if test.classes != train.classes:
            raise DataError(
                "data.source",
                f"'{directory / 'test'}' has classes {test.classes[:5]}, train has {train.classes[:5]}",
                "give train/ and test/ the same class folders",
            )
        check_bad(train.bad + test.bad, cfg.max_bad_files, "data.source", directory)
        _unify_channels([train, test], cfg)
        return FolderData(
            images(train),
            torch.tensor(train.labels),
            images(test),
            torch.tensor(test.labels),
            train.classes,
            train.bad + test.bad,
        )
    tree = read_tree(directory, cfg, directory, store)
    check_bad(tree.bad, cfg.max_bad_files, "data.source", directory)
    _unify_channels([tree], cfg)
    x, y = images(tree), torch.tensor(tree.labels)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.split_seed + 7))
    n_test = max(1, len(y) // 5)
    te, tr = perm[:n_test], perm[n_test:]
    return FolderData(take(x, tr), y[tr], take(x, te), y[te], tree.classes, tree.bad)


def count_files(directory: Path) -> int:
    """Candidate image files under ``directory`` (for the storage decision; not read)."""
    return sum(1 for f in directory.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
