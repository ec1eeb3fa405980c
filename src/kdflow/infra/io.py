"""Small file helpers: atomic writes, digests, safe checkpoint loading."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdflow.errors import CheckpointError, StorageError

SEALED = "kdflow-sealed-v1"  # a torch file whose payload carries its own sha256
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_full(e: BaseException | None) -> bool:
    """An out-of-space error, also when a writer (torch's zip writer, say) re-raised it as another type."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
            return True
        e = e.__cause__ or e.__context__
    return False


def _atomic(path: Path, write) -> Path:
    """Write to a temp name beside ``path``, fsync, rename: the file is complete or absent, never half-written.

    A full disk (or quota) is one line naming the file; the previous version of the file stays intact.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if _disk_full(e):
            raise StorageError(
                str(path),
                "no space left on the device to write it",
                "free space on that disk or choose another output directory",
            ) from None
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(Path(path), lambda fh: fh.write(data))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``src``'s bytes at ``dst``, complete or absent (a copy keeps the sha256 a record names)."""
    with open(src, "rb") as source:
        return _atomic(Path(dst), lambda fh: shutil.copyfileobj(source, fh))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save, sealed: the payload is stored with its sha256, so a flipped byte is detected on load.

    (A torch file with a corrupted tensor otherwise loads silently with wrong values.)
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    sealed = {
        "format": SEALED,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    out = io.BytesIO()  # serialized in memory: the file write is then plain bytes (a full disk is an OSError)
    torch.save(sealed, out)
    return atomic_write_bytes(path, out.getvalue())


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


class CorruptFile(Exception):
    pass


def safe_torch_load(path: str | os.PathLike, field: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; every failure becomes a one-line CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(field, f"file '{p}' not found", "pass the path of a checkpoint written by kdflow")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if not (isinstance(obj, dict) and obj.get("format") == SEALED):
            return obj  # written before sealing, or by another tool
        payload = obj["payload"].numpy().tobytes()
        if hashlib.sha256(payload).hexdigest() != obj["sha256"]:
            raise CorruptFile(p)
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except CorruptFile:
        raise CheckpointError(
            field,
            f"'{p}' is corrupt (its sha256 does not match what was written)",
            "discard it (--fresh for a training checkpoint) or restore it from the store",
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        # The weights-only unpickler names a refused class or function as "Unsupported global"; any other
        # failure (random bytes, a truncated or foreign file) is simply not a checkpoint.
        if "Unsupported global" in str(e):
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
