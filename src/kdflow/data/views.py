"""The view of an image a model is shown: the train augmentation and the evaluation crop, on uint8 batches.

Two train crops, each with a horizontal flip, both with explicit per-sample parameters so that a teacher cache
can store the view each sample was shown and the student rebuild it exactly (FKD's crop boxes):
- ``pad`` (the default): RandomCrop with ``crop_padding``; parameters (row offset, column offset, flip).
- ``resized``: RandomResizedCrop (torchvision's sampling: scale of the area, log-uniform aspect ratio, ten
  tries, then the largest centred box of an allowed ratio) from the stored image, which prep may keep larger
  than the model's input (``data.store_size``, the source resolution up to that size), resized antialiased
  to ``size``; parameters (top, left, height, width, flip).
Evaluation shows the center ``size`` x ``size`` of the stored image (resize 256 -> center crop 224 when
``store_size`` is 256 and ``image_size`` 224). The spec is the manifest's ``augmentation`` dict.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SMALL_IMAGE = 64 * 64  # pixels per channel up to which a batch is cropped by one gather


def draw_augmentation(b: int, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-sample augmentation parameters (row offset, column offset, flip) as a (b, 3) int tensor."""
    i = torch.randint(0, 2 * padding + 1, (b,), generator=gen) if padding > 0 else torch.zeros(b, dtype=torch.long)
    j = torch.randint(0, 2 * padding + 1, (b,), generator=gen) if padding > 0 else torch.zeros(b, dtype=torch.long)
    flip = (torch.rand(b, generator=gen) < 0.5).long() if hflip else torch.zeros(b, dtype=torch.long)
    return torch.stack([i, j, flip], dim=1)


def apply_augmentation(x: torch.Tensor, params: torch.Tensor, padding: int) -> torch.Tensor:
    """RandomCrop(padding) + horizontal flip of a uint8 batch with explicit per-sample parameters."""
    b, c, h, w = x.shape
    if h * w > SMALL_IMAGE:
        return _crop_flip_per_sample(x, params, padding)
    if padding > 0:  # one gather over the batch: fastest for small images
        xp = F.pad(x, (padding, padding, padding, padding))
        rows = (params[:, 0, None] + torch.arange(h))[:, None, :, None]
        cols = (params[:, 1, None] + torch.arange(w))[:, None, None, :]
        x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    return _flip(x, params[:, 2])


def _crop_flip_per_sample(x: torch.Tensor, params: torch.Tensor, padding: int) -> torch.Tensor:
    """The same pixels as pad + crop + flip, one copy per sample: for large images the gather's index tensors
    (8 bytes per pixel), the padded copy and the batch-wide flip cost 5x more."""
    _, _, h, w = x.shape
    out = torch.zeros_like(x) if padding > 0 else torch.empty_like(x)
    for k, (i, j, flip) in enumerate(params[:, :3].tolist()):
        r0, c0 = i - padding, j - padding  # the window's corner in the unpadded image
        sr0, sr1, sc0, sc1 = max(r0, 0), min(r0 + h, h), max(c0, 0), min(c0 + w, w)
        out[k, :, sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = x[k, :, sr0:sr1, sc0:sc1]
        if flip:
            out[k] = out[k].flip(-1)
    return out


def _flip(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    flip = flags.bool()
    if flip.any():
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def draw_resized_crops(
    b: int, hw: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float], hflip: bool, gen
) -> torch.Tensor:
    """(b, 5) RandomResizedCrop boxes (top, left, height, width, flip) in an ``hw`` image, torchvision's rule
    vectorised: the first of ten draws that fits, else the largest centred box of an allowed ratio."""
    h, w = hw
    tries = 10
    area = h * w * torch.empty(b, tries).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(b, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).round().long()
    ch = torch.sqrt(area / aspect).round().long()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((b,), -1))
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(h * ratio[1])), h
    else:
        fw, fh = w, h
    rows = torch.arange(b)
    bh = torch.where(first >= 0, ch[rows, first.clamp(min=0)], torch.full((b,), fh))
    bw = torch.where(first >= 0, cw[rows, first.clamp(min=0)], torch.full((b,), fw))
    u = torch.rand(b, 2, generator=gen)
    top = torch.where(first >= 0, (u[:, 0] * (h - bh + 1)).floor().long(), (h - bh) // 2)
    left = torch.where(first >= 0, (u[:, 1] * (w - bw + 1)).floor().long(), (w - bw) // 2)
    flip = (torch.rand(b, generator=gen) < 0.5).long() if hflip else torch.zeros(b, dtype=torch.long)
    return torch.stack([top, left, bh, bw, flip], dim=1)


def apply_resized_crops(x: torch.Tensor, params: torch.Tensor, size: int) -> torch.Tensor:
    """Each sample's box resized (bilinear, antialiased) to ``size`` x ``size``, then flipped: uint8."""
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    for k, (t, left, bh, bw, _) in enumerate(params.tolist()):
        crop = x[k : k + 1, :, t : t + bh, left : left + bw].float()
        if (bh, bw) != (size, size):
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[k] = crop[0].round().clamp(0, 255).to(torch.uint8)
    return _flip(out, params[:, 4])


def center(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The centre ``size`` x ``size`` of a uint8 batch (the evaluation view of a larger stored image)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if size is None or (h, w) == (size, size):
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size].contiguous()


def view_size(spec: dict | None, stored_hw: tuple[int, ...]) -> tuple[int, int]:
    """The (height, width) a model sees under ``spec``."""
    size = (spec or {}).get("size")
    return (int(size), int(size)) if size else (int(stored_hw[0]), int(stored_hw[1]))


def draw_views(n: int, spec: dict | None, stored_hw: tuple[int, ...], gen: torch.Generator) -> torch.Tensor | None:
    """Per-sample view parameters under ``spec``; None when it does not augment (the evaluation view)."""
    if not spec or not spec.get("enabled"):
        return None
    if spec.get("crop") == "resized":
        hw = (int(stored_hw[0]), int(stored_hw[1]))
        return draw_resized_crops(n, hw, tuple(spec["scale"]), tuple(spec["ratio"]), spec.get("hflip", False), gen)
    return draw_augmentation(n, spec.get("crop_padding", 0), spec.get("hflip", False), gen)


def apply_views(x: torch.Tensor, params: torch.Tensor | None, spec: dict | None) -> torch.Tensor:
    """The views ``params`` (from :func:`draw_views` or a teacher cache) of a stored uint8 batch; rows of named
    inputs (not N C H W images) have one view, themselves."""
    if x.dim() != 4:
        return x
    size = (spec or {}).get("size")
    if params is None:
        return center(x, size)
    if params.shape[1] == 5:
        return apply_resized_crops(x, params, int(size or x.shape[-1]))
    pad = spec.get("crop_padding", 0) if spec and spec.get("enabled") else 0
    return center(apply_augmentation(x, params, pad), size)
