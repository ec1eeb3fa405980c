"""Image geometry at prep: the evaluation transform (shorter side resized to the size, then a center crop).

Applied once when a dataset is prepared, so every split is one uint8 tensor of one size; antialiased so a
large photo shrunk to 32-64 px keeps its content instead of aliasing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) float on the 0-255 scale -> uint8 (C, size, size)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
    return _fit(t, size)[0].numpy()


def resize_center_crop_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), in chunks to bound memory."""
    if tuple(x.shape[2:]) == (size, size):
        return x
    return (
        torch.cat([_fit(x[i : i + 4096].float(), size) for i in range(0, len(x), 4096)])
        if len(x)
        else x[:, :, :size, :size]
    )


def to_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """uint8 (N, C, H, W) as grey (ITU-R 601 luma, as Pillow's "L") or RGB; None keeps it."""
    if channels is None or int(x.shape[1]) == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def _fit(t: torch.Tensor, size: int) -> torch.Tensor:
    h, w = int(t.shape[2]), int(t.shape[3])
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return t[:, :, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)
