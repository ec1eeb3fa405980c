"""One guarded loader per kind of file kdflow reads from a user: any failure is one line naming the file and the fix.

Checkpoints go through :func:`kdflow.infra.io.safe_torch_load`, ONNX models through
:func:`kdflow.release.export.onnx_session`; here are the others: JSON state, TorchScript, images, the study
database. A path that is a directory where a file is expected (or the reverse) is named as such.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from kdflow.errors import CheckpointError, DataError, ExportError, KdflowError


def _a_file(path: Path, field: str, error: type[KdflowError], fix: str) -> Path:
    if path.is_dir():
        raise error(field, f"'{path}' is a directory, not a file", fix)
    if not path.is_file():
        raise error(field, f"'{path}' not found", fix)
    return path


def read_json_state(path: str | Path, field: str, fix: str) -> Any:
    """A JSON file kdflow wrote (a manifest, a step result, an evaluation): unreadable, truncated or not JSON is
    one line."""
    p = _a_file(Path(path), field, CheckpointError, fix)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(field, f"'{p}' is not readable JSON ({type(e).__name__})", fix) from None


def load_torchscript(path: str | Path, field: str):
    """A TorchScript export, in eval mode; a truncated, corrupt or foreign file is one line."""
    import torch

    p = _a_file(Path(path), field, ExportError, "pass the export step's student.torchscript.pt")
    try:
        return torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - torch.jit.load raises RuntimeError, ValueError, zip errors, ...
        raise ExportError(
            field, f"'{p}' is not a readable TorchScript file ({type(e).__name__})", "re-export it with `kdflow export`"
        ) from None


def _to_8bit_scale(img) -> np.ndarray:
    """Pixel values on the 0-255 scale the model was trained on, whatever the bit depth: a 16-bit image read as
    if it were 8-bit would be off by 257x (and silently another class)."""
    a = np.asarray(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return a.astype(np.float32) / 257.0
    if img.mode == "I":  # 32-bit integer: PNG 16-bit greyscale opens as this
        return a.astype(np.float32) / (257.0 if a.max(initial=0) > 255 else 1.0)
    if img.mode == "F":  # floats: taken as 0-1 if they fit there, else as 0-255
        return a.astype(np.float32) * (255.0 if a.max(initial=0) <= 1.0 else 1.0)
    return a.astype(np.float32)


GREY_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def read_image(path: str | Path, channels: int | None, field: str = "images") -> np.ndarray:
    """One image as float32 (channels, height, width) on the 0-255 scale: EXIF orientation applied; palette,
    alpha (composited on white), CMYK, 1-bit and 16-bit modes converted; grey or RGB as the model wants
    (``channels`` None: grey for a grey image, RGB otherwise)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = _a_file(Path(path), field, DataError, "pass image files (PNG, JPEG, ...)")
    try:
        with Image.open(p) as opened:
            opened.load()  # a truncated file fails here, not later
            img = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(field, f"'{p}' is not a readable image ({str(e)[:80]})", "pass an intact PNG or JPEG") from None
    if channels is None:
        channels = 1 if img.mode in GREY_MODES else 3
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = _to_8bit_scale(img)
        return np.repeat(grey[None], channels, axis=0) if channels > 1 else grey[None]
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    img = img.convert("L" if channels == 1 else "RGB")
    a = np.asarray(img, dtype=np.float32)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def check_study_db(path: Path, field: str = "--out") -> None:
    """The tune directory's study database must be SQLite that opens, before Optuna touches it."""
    if not path.exists():
        return
    _a_file(path, field, DataError, "choose a new --out for the study")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        raise DataError(
            field, f"'{path}' is not a readable study database ({e})", "restore it, or choose a new --out"
        ) from None
