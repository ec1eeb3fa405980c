"""Where a prepared dataset's pixels live (``data.storage``), and the streamed passes prep makes over them.

``memory``: each split file holds its uint8 tensor (the fast path for data that fits, e.g. Fashion-MNIST).
``disk``: the images are decoded once into the dataset's ``pixels.u8`` and each split file holds row numbers
(:mod:`kdflow.data.pixels`); training then reads a batch at a time. ``auto`` picks disk for an image folder
whose decoded pixels would pass :data:`AUTO_DISK_BYTES`. Both give the same digests and the same batches, so
the choice is a machine setting: it is not in any fingerprint. Digest, normalization statistics and the
content hashes are computed chunk by chunk here, so prep's memory is bounded too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from kdflow.config import DataConfig
from kdflow.config.sections import FEATURE_DATASETS
from kdflow.data.batches import Split
from kdflow.data.pixels import EVAL_STORE_FILE, STORE_FILE, DiskImages, PixelWriter, chunks, decoded_bytes
from kdflow.data.views import center
from kdflow.errors import DataError

STATS_CHUNK_BYTES = 8 << 20  # uint8 per chunk of the statistics pass (its int32 copy is 4x)
AUTO_DISK_BYTES = 2 << 30  # an image folder decoding to more than this is kept on disk by default


def open_store(cfg: DataConfig, out_dir: Path, source_dir: Path | None) -> PixelWriter | None:
    """A writer into ``out_dir``'s pixel store when the pixels go to disk, else None."""
    if cfg.storage == "memory":
        return None
    if cfg.dataset in FEATURE_DATASETS:  # rows of named inputs: memory, always
        if cfg.storage == "disk":
            raise DataError("data.storage", "feature rows are kept in memory", "set data.storage: memory or auto")
        return None
    folder = cfg.dataset == "imagefolder"
    fixed = cfg.image_size is not None and cfg.channels is not None
    if cfg.storage == "disk" and folder and not fixed:
        raise DataError(
            "data.storage",
            "disk storage of an image folder needs one image shape known before reading",
            "set data.image_size and data.channels (or data.storage: memory)",
        )
    if cfg.storage == "auto":
        if not (folder and fixed and source_dir is not None):
            return None
        from kdflow.data.imagefolder import count_files

        chw = (int(cfg.channels), int(cfg.stored_size), int(cfg.stored_size))  # type: ignore[arg-type]
        if decoded_bytes(count_files(source_dir), chw) <= AUTO_DISK_BYTES:
            return None
    if folder:
        return PixelWriter(out_dir, (int(cfg.channels), int(cfg.stored_size), int(cfg.stored_size)))  # type: ignore[arg-type]
    return PixelWriter(out_dir)  # IDX data: the shape is known once it is loaded


def to_store(x, writer: PixelWriter | None):
    """Tensor images into the store (IDX data); images already on disk pass through."""
    if writer is None or isinstance(x, DiskImages):
        return x
    return writer.append_all(x)


def digest(*tensors) -> str:
    """sha256 over each tensor's shape and bytes, the same for a tensor and the same images on disk."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        if isinstance(t, DiskImages) or t.dtype == torch.uint8 and t.dim() == 4:
            for chunk in chunks(t):
                h.update(chunk.contiguous().numpy().tobytes())
        else:
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def channel_stats(x) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std on the 0-1 scale, from exact integer sums over small chunks (a float64
    copy of a large chunk was prep's peak memory)."""
    c = int(x.shape[1])
    total, sq, n = np.zeros(c, dtype=np.int64), np.zeros(c, dtype=np.int64), 0
    for chunk in chunks(x, STATS_CHUNK_BYTES):
        a = chunk.numpy().astype(np.int32)
        total += a.sum(axis=(0, 2, 3), dtype=np.int64)
        sq += (a * a).sum(axis=(0, 2, 3), dtype=np.int64)
        n += a.shape[0] * a.shape[2] * a.shape[3]
    mean = total / max(n, 1)
    var = (sq - total.astype(np.float64) * mean) / max(n - 1, 1)
    std = np.sqrt(np.maximum(var, 0.0)) / 255.0
    return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in std.clip(min=1e-3))


def eval_views(splits: list[Split], size: int, out: Path) -> list[Split]:
    """The evaluation splits as the centre ``size`` crop of their stored images (train is stored larger,
    ``data.store_size``); on disk they get a store of their own."""
    if not any(isinstance(sp.x, DiskImages) for sp in splits):
        return [Split(center(sp.x, size), sp.y) for sp in splits]  # type: ignore[arg-type]
    c = int(splits[0].x.shape[1])
    writer = PixelWriter(out, (c, size, size), EVAL_STORE_FILE)
    spans = []
    try:
        for sp in splits:
            first = writer.count
            for chunk in chunks(sp.x):
                for img in center(chunk, size):
                    writer.append(img.numpy())
            spans.append((first, writer.count))
        final = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return [
        Split(DiskImages(final, (c, size, size), torch.arange(a, b)), sp.y)
        for (a, b), sp in zip(spans, splits, strict=True)
    ]


def split_blob(split: Split) -> dict:
    """What a split file holds: the tensor, or the store's file name and the split's rows."""
    if isinstance(split.x, DiskImages):
        name = split.x.path.name if split.x.path.name == EVAL_STORE_FILE else STORE_FILE
        return {"store": name, "chw": list(split.x.chw), "rows": split.x.rows.contiguous(), "y": split.y}
    return {"x": split.x.contiguous(), "y": split.y.contiguous()}


def split_from_blob(blob: dict, directory: Path, path: Path) -> Split:
    if "store" not in blob:
        return Split(blob["x"], blob["y"])
    store = directory / str(blob["store"])
    if blob["store"] not in (STORE_FILE, EVAL_STORE_FILE) or not store.is_file():
        raise DataError(
            "dataset", f"'{path}' refers to a pixel store '{store}' that is missing", "run `kdflow prep` again"
        )
    chw, rows = tuple(int(d) for d in blob["chw"]), blob["rows"]
    row_bytes, size = int(np.prod(chw)), store.stat().st_size
    if size % row_bytes or (len(rows) and size < (int(rows.max()) + 1) * row_bytes):
        raise DataError(
            "dataset",
            f"pixel store '{store}' is truncated ({size} bytes) for the rows '{path}' names",
            "run `kdflow prep` again",
        )
    return Split(DiskImages(store, chw, rows), blob["y"])
