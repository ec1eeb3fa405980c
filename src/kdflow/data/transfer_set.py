"""The unlabeled transfer set: images without labels that only distillation reads, the teacher labelling them.

Distillation pays most where labels are few and images are many: the teacher's soft targets on unlabeled
images carry what its training taught it, which the student's few labels cannot. Two sources, combined:
``data.labels_kept`` keeps the labels of that many train images (seeded) and drops the others' (the
standard protocol: N labels, the rest of the set unlabeled), and ``data.unlabeled`` reads a folder of
images without classes, fitted to the labelled data's channels and size. The pool is stored with label -1;
the teacher and the scratch twin never see it, the distilled student's hard loss skips it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdflow.config import DataConfig
from kdflow.data.batches import Split
from kdflow.data.pixels import DiskImages, PixelWriter, cat, take
from kdflow.data.transforms import resize_center_crop, to_channels
from kdflow.errors import DataError

UNLABELED = -1


def keep_labels(train: Split, n: int | None, seed: int) -> tuple[Split, torch.Tensor | DiskImages]:
    """(the labelled train split, the images whose labels were dropped); ``n`` None keeps every label."""
    if n is None:
        return train, take(train.x, slice(0, 0))
    if n >= len(train):
        raise DataError(
            "data.labels_kept", f"{n} is not fewer than the {len(train)} train images", "keep fewer labels, or unset it"
        )
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 11))
    kept, dropped = perm[:n].sort().values, perm[n:].sort().values
    return Split(take(train.x, kept), train.y[kept]), take(train.x, dropped)


def read_pool(
    directory: Path, shape: tuple[int, ...], max_bad: int, store: PixelWriter | None = None
) -> tuple[torch.Tensor | DiskImages, list[dict[str, str]]]:
    """Every image under ``directory`` (recursively, hidden files skipped) fitted to ``shape`` (C, H, W), read
    as an image folder's files are (the same loader, the same bad-file rule); into ``store`` when given."""
    from kdflow.data.decode import decode_files
    from kdflow.data.imagefolder import check_bad

    files = sorted(
        f
        for f in directory.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(directory).parts)
    )
    square = shape[1] if shape[1] == shape[2] else None  # fitted as the labelled images were, from the decoded file
    jobs = [(f, f"unlabeled/{f.relative_to(directory)}", shape[0], square, "data.unlabeled") for f in files]
    images: list[np.ndarray] = []
    rows: list[int] = []
    bad: list[dict[str, str]] = []
    for img, problems in decode_files(jobs):  # in worker processes, in file order
        bad.extend(problems)
        if img is not None:
            img = resize_center_crop(img, shape[1]) if img.shape[1:] != shape[1:] else img
            if store is not None:
                rows.append(store.append(img))
            else:
                images.append(img)
    check_bad(bad, max_bad, "data.unlabeled", directory, prefix="unlabeled/")
    if not images and not rows:
        raise DataError("data.unlabeled", f"'{directory}' holds no readable image", "point it at a folder of images")
    if store is not None:
        return store.images(torch.tensor(rows, dtype=torch.long)), bad
    return torch.from_numpy(np.stack(images)).contiguous(), bad


def build_pool(
    train: Split, cfg: DataConfig, cache_dir: Path, store: PixelWriter | None = None
) -> tuple[Split, Split, list[dict[str, str]]]:
    """(the labelled train split, the unlabeled pool with label -1, bad files of data.unlabeled)."""
    from kdflow.data.raw import resolve_local

    labelled, dropped = keep_labels(train, cfg.labels_kept, cfg.split_seed)
    xs: list = [dropped]
    bad: list[dict[str, str]] = []
    if cfg.unlabeled:
        shape = tuple(int(d) for d in train.x.shape[1:])
        local = resolve_local(cfg.unlabeled, "data.unlabeled", cache_dir)
        folder, bad = read_pool(local, shape, cfg.max_bad_files, store if isinstance(train.x, DiskImages) else None)
        xs.append(folder if isinstance(folder, DiskImages) else to_channels(folder, shape[0]))
    x = cat(xs)
    return labelled, Split(x, torch.full((len(x),), UNLABELED, dtype=torch.long)), bad


def with_pool(train: Split, pool: Split) -> Split:
    """The distilled student's training set: the labelled images, then the pool."""
    return Split(cat([train.x, pool.x]), torch.cat([train.y, pool.y]))
