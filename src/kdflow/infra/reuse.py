"""Trained models kept by fingerprint, so a run whose inputs did not change reuses them instead of retraining.

A training step's fingerprint (kdflow.infra.fingerprint) names everything its weights depend on: the config
fields of its role, the prepared data's content digest, the teacher checkpoint's sha256 and kdflow's
code. A scheduled retraining whose data window did not change computes the same fingerprint, finds
the weights an earlier run published under it, and copies them; any change (one config field, one
image, another teacher) gives another fingerprint and trains. Entries are published whole (exactly the
files of the step's complete manifest, staged, then renamed). On reuse every file is checked against its
recorded sha256 and the model file's own metadata (architecture, role, data digest, fingerprint key)
against the job, so a half-written, altered or swapped entry is never taken: it is moved to
``_quarantine/`` and reported. The store is capped (``storage.reuse_max_gb``): the least recently used
entries are evicted after each publish; ``kdflow store ls|gc`` shows and trims it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from kdflow.errors import KdflowError
from kdflow.infra import step_manifest
from kdflow.infra.io import CorruptFile, atomic_write_json, safe_torch_load, sha256_file

# What a training step leaves in its output directory and a reuse must restore (model*.pt covers the
# teacher's best_val variant and its snapshots).
PATTERNS = ("model*.pt", "metrics.json", "history.json", "history.csv")
INDEX = "entry.json"
QUARANTINE = "_quarantine"


def key(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:20]


def entry_dir(store: Path, role: str, fp: dict[str, Any]) -> Path:
    return store / role / key(fp)


def _damage(entry: Path, fp: dict[str, Any], role: str, arch: str | None) -> str | None:
    """Why ``entry`` must not be taken for this job (None: it is intact and is this job's model)."""
    try:
        meta = json.loads((entry / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable {INDEX} ({e.__class__.__name__})"
    if meta.get("fingerprint") != json.loads(json.dumps(fp, default=str)):
        return "its index records another fingerprint"
    files = meta.get("files", {})
    if "model.pt" not in files:
        return "no model.pt"
    for name, digest in files.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its recorded sha256"
    try:
        blob = safe_torch_load(entry / "model.pt", "storage.reuse")
    except (CorruptFile, KdflowError, OSError) as e:
        return f"model.pt does not load ({str(e)[:80]})"
    extra = blob.get("extra", {}) if isinstance(blob, dict) else {}
    recorded = {
        "architecture": blob.get("arch") if isinstance(blob, dict) else None,
        "role": extra.get("role"),
        "data digest": extra.get("data_digest"),
        "fingerprint key": extra.get("fingerprint_key"),
    }
    expected = {"architecture": arch, "role": role, "data digest": fp.get("data_digest"), "fingerprint key": key(fp)}
    wrong = [k for k in expected if expected[k] is not None and recorded[k] != expected[k]]
    if wrong:
        return "model.pt's own " + ", ".join(f"{k} is {recorded[k]!r}, not {expected[k]!r}" for k in wrong)
    return None


def quarantine(entry: Path, reason: str) -> Path:
    """Move a damaged entry out of the store's index (kept for inspection, never taken) and say so."""
    store = entry.parent.parent
    target = store / QUARANTINE / f"{entry.parent.name}-{entry.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(entry, target)
    (target / "REASON.txt").write_text(reason + "\n")
    print(f"[reuse] {entry.parent.name}/{entry.name}: {reason}: quarantined to {target}; training instead")
    return target


def lookup(store: Path, role: str, fp: dict[str, Any], arch: str | None = None) -> Path | None:
    """The published entry for exactly this fingerprint, when one is there, intact and this job's model
    (architecture, role, data digest); a damaged one is quarantined. None when there is none to take."""
    entry = entry_dir(store, role, fp)
    if not entry.is_dir():
        return None
    reason = _damage(entry, fp, role, arch)
    if reason is not None:
        quarantine(entry, reason)
        return None
    os.utime(entry / INDEX)  # last used: what the size cap evicts by
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


def publish(
    store: Path, role: str, fp: dict[str, Any], out: Path, source: dict[str, Any], max_gb: float | None = None
) -> Path:
    """Publish a finished step's outputs (its manifest's files) under its fingerprint; an existing entry is
    left as it is. Then the store is trimmed to ``max_gb`` (least recently used first, never this entry)."""
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
    if max_gb is not None:
        gc(store, int(max_gb * 1e9), keep={entry})
    return entry


def source_of(entry: Path) -> dict[str, Any]:
    return json.loads((entry / INDEX).read_text()).get("source", {})


@dataclass
class Entry:
    path: Path
    role: str
    bytes: int
    last_used: float
    source: dict[str, Any]
    arch: str


def entries(store: Path) -> list[Entry]:
    """Every published entry, least recently used first."""
    found = []
    for index in Path(store).glob(f"*/*/{INDEX}"):
        entry = index.parent
        if entry.parent.name.startswith(("_", ".")) or entry.name.startswith("."):
            continue
        try:
            meta = json.loads(index.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        fp = meta.get("fingerprint", {})
        arch = fp.get("teacher.arch") if entry.parent.name == "teacher" else fp.get("student.arch")
        size = sum(p.stat().st_size for p in entry.iterdir() if p.is_file())
        found.append(Entry(entry, entry.parent.name, size, index.stat().st_mtime, meta.get("source", {}), str(arch)))
    return sorted(found, key=lambda e: e.last_used)


def gc(store: Path, max_bytes: int, keep: set[Path] | None = None) -> list[Entry]:
    """Evict the least recently used entries until the store holds at most ``max_bytes``; staging
    directories an interrupted publish left (older than an hour) go too. Returns what was evicted."""
    keep = keep or set()
    for staging in Path(store).glob("*/.*-*"):
        if staging.is_dir() and time.time() - staging.stat().st_mtime > 3600:
            shutil.rmtree(staging, ignore_errors=True)
    listed = entries(store)
    total = sum(e.bytes for e in listed)
    evicted = []
    for e in listed:
        if total <= max_bytes:
            break
        if e.path in keep:
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        total -= e.bytes
        evicted.append(e)
    return evicted
