"""Decoding a folder's image files at prep, in worker processes sized from the CPU quota.

Decoding and resizing a photo costs milliseconds; a tree of 100,000 files is minutes of one core. Files are
decoded in order by a process pool (fork; one torch thread each, as DataLoader workers run) and handed back
in order, so the prepared dataset is the same whatever the number of workers. Small trees are decoded inline:
starting workers costs more than they save.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

POOL_MIN_FILES = 256


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _decode(job: tuple[Path, str, int | None, int | None, str]) -> tuple[np.ndarray | None, list[dict[str, str]]]:
    from kdflow.data.imagefolder import read_file

    path, rel, channels, size, field = job
    bad: list[dict[str, str]] = []
    return read_file(path, rel, channels, size, field, bad), bad


def decode_files(
    jobs: Sequence[tuple[Path, str, int | None, int | None, str]], workers: int | None = None
) -> Iterator[tuple[np.ndarray | None, list[dict[str, str]]]]:
    """(image or None, bad-file entries) per job, in the jobs' order."""
    if workers is None:
        from kdflow.infra.cpu import available_cpus

        workers = available_cpus()
    if workers <= 1 or len(jobs) < POOL_MIN_FILES:
        yield from map(_decode, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        results: Iterable = pool.imap(_decode, jobs, chunksize=16)
        yield from results
