"""Trained models kept by fingerprint, so a run whose inputs did not change reuses them instead of retraining.

A training step's fingerprint (kdflow.infra.fingerprint) names everything its weights depend on: the config
fields of its role, the prepared data's content digest, the teacher checkpoint's sha256 and kdflow's
version. A scheduled retraining whose data window did not change computes the same fingerprint, finds
the weights an earlier run published under it, and copies them; any change (one config field, one
image, another teacher) gives another fingerprint and trains. Entries are published whole (written to
a temporary directory, then renamed) and every file is checked against its recorded sha256 on reuse,
so a half-written or altered entry is never taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from kdflow.infra import step_manifest
from kdflow.infra.io import atomic_write_json, sha256_file

# What a training step leaves in its output directory and a reuse must restore (model*.pt covers the
# teacher's best_val variant and its snapshots).
PATTERNS = ("model*.pt", "metrics.json", "history.json", "history.csv")
INDEX = "entry.json"


def key(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:20]


def entry_dir(store: Path, role: str, fp: dict[str, Any]) -> Path:
    return store / role / key(fp)


def lookup(store: Path, role: str, fp: dict[str, Any]) -> Path | None:
    """The published entry for exactly this fingerprint, when one is there and intact; else None."""
    entry = entry_dir(store, role, fp)
    index = entry / INDEX
    if not index.is_file():
        return None
    try:
        meta = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("fingerprint") != json.loads(json.dumps(fp, default=str)):
        return None  # a key collision or an entry of another kdflow: never taken
    files = meta.get("files", {})
    if "model.pt" not in files:
        return None
    for name, digest in files.items():
        path = entry / name
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return entry


def restore(entry: Path, out: Path) -> list[str]:
    """Copy an entry's files into a step's output directory (each under a temporary name, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(json.loads((entry / INDEX).read_text())["files"])
    for name in names:
        tmp = out / f".{name}.reuse-tmp"
        shutil.copy2(entry / name, tmp)
        os.replace(tmp, out / name)
    return names


def published_files(out: Path) -> list[str]:
    """The step's outputs a reuse restores: exactly those its complete manifest lists (never a file an earlier
    run left in the directory), of the kinds in PATTERNS."""
    manifest = step_manifest.read(out)
    if manifest is None or manifest["status"] != step_manifest.COMPLETE:
        raise RuntimeError(f"{out}: publish needs the step's complete manifest")
    return sorted(n for n in manifest["outputs"] if "/" not in n and any(fnmatch(n, p) for p in PATTERNS))


def publish(store: Path, role: str, fp: dict[str, Any], out: Path, source: dict[str, Any]) -> Path:
    """Publish a finished step's outputs (its manifest's files) under its fingerprint; an existing entry is
    left as it is."""
    entry = entry_dir(store, role, fp)
    if (entry / INDEX).is_file():
        return entry
    names = published_files(out)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        files = {}
        for name in names:
            shutil.copy2(out / name, staging / name)
            files[name] = sha256_file(staging / name)
        atomic_write_json(staging / INDEX, {"fingerprint": fp, "files": files, "source": source})
        try:
            os.rename(staging, entry)
        except OSError:  # another run published the same fingerprint meanwhile: theirs stands
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return entry


def source_of(entry: Path) -> dict[str, Any]:
    return json.loads((entry / INDEX).read_text()).get("source", {})
