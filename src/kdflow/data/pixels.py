"""Images kept on disk: one raw uint8 file per prepared dataset, read a batch at a time.

A dataset whose decoded pixels do not fit in memory is decoded once at prep into ``pixels.u8`` (rows of
C x H x W uint8, nothing else: no header, no compression, so a batch is a handful of page-cache reads and no
decoding per epoch). A split is then a list of row numbers into it (:class:`DiskImages`), which indexes like
the uint8 tensor an in-memory split holds: ``x[idx]`` reads those rows into a new tensor, ``x.shape`` and
``len(x)`` are the split's. The file is mapped only for the duration of one read, so the resident memory of
a process training on it is a few batches, whatever the dataset's size. The helpers below (:func:`take`,
:func:`cat`, :func:`chunks`) treat a tensor and a :class:`DiskImages` alike, so prep never materialises a
split it only selects or hashes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

STORE_FILE = "pixels.u8"
EVAL_STORE_FILE = "pixels-eval.u8"  # the evaluation splits' centre crops, when train is stored larger
CHUNK_BYTES = 64 << 20  # what one streamed pass (digest, statistics, content hashes) holds at a time


class DiskImages:
    """Rows ``rows`` of the uint8 image file ``path`` (each C x H x W), indexed like an N x C x H x W tensor."""

    def __init__(self, path: str | Path, chw: tuple[int, ...], rows: torch.Tensor):
        self.path = Path(path)
        self.chw = tuple(int(d) for d in chw)
        self.rows = rows.to(torch.long)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.chw))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> torch.Tensor:
        """The selected images read into memory (a tensor, as indexing a tensor gives)."""
        rows = self.rows[key]
        if rows.dim() == 0:
            return self._read(rows.view(1))[0]
        return self._read(rows)

    def take(self, key) -> DiskImages:
        """A selection that stays on disk (a view: only row numbers are copied)."""
        rows = self.rows[key]
        return DiskImages(self.path, self.chw, rows.view(-1) if rows.dim() == 0 else rows)

    def _read(self, rows: torch.Tensor) -> torch.Tensor:
        if not len(rows):
            return torch.empty((0, *self.chw), dtype=torch.uint8)
        row_bytes = int(np.prod(self.chw))
        total = os.path.getsize(self.path) // row_bytes
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(total, *self.chw))
        try:
            out = mapped[rows.numpy()]  # fancy indexing copies: nothing stays mapped after this call
        finally:
            del mapped
        return torch.from_numpy(out)

    def __reduce__(self):  # DataLoader workers get the path and the row numbers, never pixels
        return (DiskImages, (str(self.path), self.chw, self.rows))


def take(x: torch.Tensor | DiskImages, key) -> torch.Tensor | DiskImages:
    """``x[key]`` that keeps a disk split on disk."""
    return x.take(key) if isinstance(x, DiskImages) else x[key]


def cat(xs: list) -> torch.Tensor | DiskImages:
    """Concatenate splits; disk splits of one file concatenate their row numbers."""
    xs = [x for x in xs if len(x)] or xs[:1]
    if len(xs) == 1:
        return xs[0]
    if all(isinstance(x, DiskImages) for x in xs) and len({(x.path, x.chw) for x in xs}) == 1:
        return DiskImages(xs[0].path, xs[0].chw, torch.cat([x.rows for x in xs]))
    return torch.cat([x if isinstance(x, torch.Tensor) else x[:] for x in xs])


def chunks(x: torch.Tensor | DiskImages, chunk_bytes: int = CHUNK_BYTES) -> Iterator[torch.Tensor]:
    """The images of ``x`` in order, a bounded number at a time (uint8 tensors)."""
    n = len(x)
    per = max(1, chunk_bytes // max(1, int(np.prod(tuple(x.shape[1:])))))
    for start in range(0, n, per):
        yield x[start : start + per]


def loader_workers(explicit: int | None, x, device: torch.device) -> int:
    """``train.loader_workers``, or by default: none for images in memory (a batch is one indexing op), else one
    per CPU of the quota beyond the one training uses (at least 1; at most 8), so reads overlap compute."""
    if explicit is not None:
        return explicit
    if not isinstance(x, DiskImages):
        return 0
    from kdflow.infra.cpu import available_cpus

    return max(1, min(8, available_cpus() - 1))


def decoded_bytes(n: int, chw: tuple[int, ...]) -> int:
    return int(n) * int(np.prod(chw))


class PixelWriter:
    """Appends C x H x W uint8 images to ``<dir>/pixels.u8`` through a temporary name; :meth:`finish` renames
    it into place, :meth:`abort` removes it, finished or not (prep then leaves nothing half-written). ``chw``
    None takes the shape from the first images written (data that arrives as tensors)."""

    def __init__(self, directory: str | Path, chw: tuple[int, ...] | None = None, name: str = STORE_FILE):
        self.final = Path(directory) / name
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(f".{name}.{os.getpid()}.tmp")
        self.chw = tuple(int(d) for d in chw) if chw is not None else None
        self._f = open(self.tmp, "wb")  # noqa: SIM115 - closed by finish/abort
        self.count = 0
        self.finished = False

    def append(self, img: np.ndarray) -> int:
        """Write one image; returns its row number."""
        self.chw = self.chw or tuple(int(d) for d in img.shape)
        if tuple(img.shape) != self.chw or img.dtype != np.uint8:
            raise ValueError(f"image of shape {tuple(img.shape)} {img.dtype} in a {self.chw} uint8 store")
        self._f.write(np.ascontiguousarray(img).tobytes())
        self.count += 1
        return self.count - 1

    def append_all(self, x: torch.Tensor) -> DiskImages:
        """Write a uint8 N x C x H x W tensor, a chunk at a time; returns its rows."""
        first = self.count
        for chunk in chunks(x):
            for img in chunk.numpy():
                self.append(img)
        return self.images(torch.arange(first, self.count))

    def images(self, rows: torch.Tensor) -> DiskImages:
        """Rows of this store, readable now (prep reads them to split and hash before :meth:`finish`; the split
        files record only the store's file name and the row numbers)."""
        self._f.flush()
        return DiskImages(self.tmp, self.chw or (0,), rows)

    def finish(self) -> Path:
        self._f.close()
        os.replace(self.tmp, self.final)
        self.finished = True
        return self.final

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.tmp.unlink(missing_ok=True)
        if self.finished:
            self.final.unlink(missing_ok=True)
