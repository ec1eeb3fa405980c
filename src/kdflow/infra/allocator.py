"""glibc allocator settings for CPU training.

A batch's activations are a few MB each. glibc serves blocks that large with mmap and returns them to
the OS on free (and trims the heap top), so the next batch faults the same memory back in, page by page:
measured here, ~300k minor page faults per second and a third of the CPU time in the kernel during a
resnet20 forward. Raising the mmap threshold to its maximum (32 MB) and the trim threshold to 1 GB keeps
freed buffers in the process for reuse. Other C libraries (musl) and other systems are left alone.

A DataLoader worker is the opposite case: it allocates a batch, hands it to the trainer through shared
memory and frees it, so freed memory kept there is never reused by training and only grows its resident
size (measured: 1.5 GB in a worker reading 224 px batches under the trainer's inherited settings). Workers
call :func:`return_freed_memory`: batch-sized blocks are mmapped and given back on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the largest value mallopt accepts
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
        )
    except (OSError, AttributeError):
        return False


def return_freed_memory() -> bool:
    """A loader worker's settings: blocks from 1 MB up are mmapped (returned on free), the heap top trimmed
    past 1 MB; fixed values also stop glibc from raising the thresholds as blocks are freed."""
    return _mallopt(1 << 20, 1 << 20)


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True when glibc accepted them."""
    global _applied
    if _applied is None:
        _applied = _mallopt(MMAP_THRESHOLD, TRIM_THRESHOLD)
    return _applied
