"""Small file helpers: atomic writes, digests, safe checkpoint loading."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdflow.errors import CheckpointError


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return _atomic(Path(path), lambda fh: torch.save(obj, fh))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def csv_text(rows: list[dict]) -> str:
    """Rows of dicts as CSV text, columns sorted over all rows; empty for no rows (e.g. a training history)."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=sorted({k for row in rows for k in row}))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def safe_torch_load(path: str | os.PathLike, field: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; every failure becomes a one-line CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(field, f"file '{p}' not found", "pass the path of a checkpoint written by kdflow")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                field,
                f"'{p}' carries pickled code or objects, refused (weights_only loading)",
                "save only tensors and plain types (a state_dict), e.g. with kdflow's own steps",
            ) from None
        raise CheckpointError(
            field,
            f"'{p}' is not a readable checkpoint ({type(e).__name__})",
            "re-create it; the file is truncated or not a torch checkpoint",
        ) from None
