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

HASH_RANGE = 2**64


def release_members(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A bool mask over the samples: True for the release split's members."""
    n = int(y.shape[0])
    if fraction <= 0 or n == 0:
        return torch.zeros(n, dtype=torch.bool)
    threshold = int(fraction * HASH_RANGE)
    pixels = np.ascontiguousarray(x.reshape(n, -1).numpy())
    labels = y.numpy()
    prefix = f"kdflow-release:{seed}:".encode()
    mask = np.fromiter(
        (
            int.from_bytes(
                hashlib.sha256(prefix + int(labels[i]).to_bytes(8, "little") + pixels[i].tobytes()).digest()[:8],
                "little",
            )
            < threshold
            for i in range(n)
        ),
        dtype=bool,
        count=n,
    )
    return torch.from_numpy(mask)


def shared_images(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many images of ``a`` are byte-identical to some image of ``b`` (a test image also in train)."""
    if not len(a) or not len(b) or a.shape[1:] != b.shape[1:]:
        return 0
    seen = {hashlib.sha256(row.tobytes()).digest() for row in np.ascontiguousarray(b.reshape(len(b), -1).numpy())}
    return sum(
        hashlib.sha256(row.tobytes()).digest() in seen for row in np.ascontiguousarray(a.reshape(len(a), -1).numpy())
    )
