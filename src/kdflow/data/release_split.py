"""The release split: the images only the release decision reads (the gate's final check and promotion).

Validation picks epochs, recipes and students, so a model chosen on it looks better there than it is; a
champion judged on the split it was selected on, or on images a later window trained on, wins by leakage.
The release split is therefore carved from the whole raw train stream by each image's own content, not
its position: an image belongs to it when the sha256 of (``data.release_seed``, label, pixels) falls below
``data.release_fraction`` of the hash range. Membership never depends on the window, the split seed or the
stream's length, so every window of a dataset shares one release split, no window ever trains or selects on
it, a growing stream only adds members, and byte-identical copies of an image land on the same side.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from kdflow.data.pixels import chunks

HASH_RANGE = 2**64


def _row_hashes(x, prefix: bytes = b"", labels: np.ndarray | None = None):
    """sha256 of each image's bytes (after ``prefix`` and its label), streamed a chunk of images at a time."""
    i = 0
    for chunk in chunks(x):
        rows = np.ascontiguousarray(chunk.reshape(len(chunk), -1).numpy())
        for row in rows:
            label = int(labels[i]).to_bytes(8, "little") if labels is not None else b""
            yield hashlib.sha256(prefix + label + row.tobytes()).digest()
            i += 1


def release_members(x, y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A bool mask over the samples (``x`` a uint8 tensor or images on disk): True for the release split's members."""
    n = int(y.shape[0])
    if fraction <= 0 or n == 0:
        return torch.zeros(n, dtype=torch.bool)
    threshold = int(fraction * HASH_RANGE)
    prefix = f"kdflow-release:{seed}:".encode()
    mask = np.fromiter(
        (int.from_bytes(d[:8], "little") < threshold for d in _row_hashes(x, prefix, y.numpy())), dtype=bool, count=n
    )
    return torch.from_numpy(mask)


def shared_images(a, b) -> int:
    """How many images of ``a`` are byte-identical to some image of ``b`` (a test image also in train)."""
    if not len(a) or not len(b) or tuple(a.shape[1:]) != tuple(b.shape[1:]):
        return 0
    seen = set(_row_hashes(b))
    return sum(d in seen for d in _row_hashes(a))
