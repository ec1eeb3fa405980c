"""Carry the background queue's resumable state from one session's machine to the next, through git.

A session's machine keeps only what is committed: bench/_work (ignored) is gone at the next start, and with
it every checkpoint of the hours-long jobs of bench/queue.txt. ``save`` copies the small files that let a job
resume (the queue's state and logs, step and final-rung checkpoints, trained teachers, study records) into
bench/carry/, which is committed; ``restore`` puts them back where they were before ``queue_runner.py start``.
What a job rebuilds by itself is left out: prepared splits (``data/``) and teacher caches (deterministic, and
tens of MB each); so are the resume states of finished steps and any file over ``--max-mb``.

    .venv/bin/python bench/carry.py save       # at a session's end (pauses the queue while it copies)
    .venv/bin/python bench/carry.py restore    # at a session's start, before `queue_runner.py start` (from a
                                               # worktree at the commit it prints: checkpoints need their code)
    .venv/bin/python bench/carry.py status     # what is carried, its size, what differs from bench/_work

bench/carry/MANIFEST.json lists every file with its sha256; ``restore`` checks each copy against it and never
overwrites a file that is already there (the local one is newer). A saved file keeps its git blob while it
does not change (a finished teacher is stored once), so the repository grows by what changed between saves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from queue_runner import runner_pid  # noqa: E402

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "_work"
CARRY = BENCH / "carry"
REBUILT_DIRS = {"data"}  # prepared splits: steps.prep makes them again, byte for byte
REBUILT_MARKERS = ("teacher_cache", "teacher-cache")  # cached teacher outputs: rebuilt from the carried teacher
NEVER = {"runner.pid", "state.tmp"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def left_out(rel: Path, size: int, max_bytes: int, work: Path = WORK) -> str | None:
    """Why a file under bench/_work is not carried, or None when it is."""
    if rel.name in NEVER or rel.suffix == ".tmp":
        return "transient"
    if "train_state" in rel.parts:  # a step's resume state: needed only while the step has not finished
        step_dir = work.joinpath(*rel.parts[: rel.parts.index("train_state")])
        if (step_dir / "metrics.json").is_file():
            return "finished step's resume state"
    if any(part in REBUILT_DIRS or part.startswith("data-") for part in rel.parts[:-1]):  # data-augment-false too
        return "prepared split (rebuilt)"
    if any(m in part for part in rel.parts for m in REBUILT_MARKERS):
        return "teacher cache (rebuilt)"
    if "state" in rel.parts and "trained" in rel.parts:  # the reuse store: a cache of models kept elsewhere too
        return "reuse store (a cache)"
    finished = (work / rel.parent / "metrics.json").is_file() and rel.name not in ("metrics.json", "wall.json")
    sections_read_metrics = ("tune" in rel.parts and "teacher" not in rel.parts) or "dfad-factors" in rel.parts
    if sections_read_metrics and finished:  # not half a step: only what sections read
        return "a finished student's files (its metrics.json and wall.json are carried)"
    if size > max_bytes:
        return f"{size / 1e6:.1f} MB > --max-mb"
    return None


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc/PID/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def queue_commit(pid: int | None) -> str:
    """The commit of the code the queue runs (the runner's folder, often a worktree), else of this checkout:
    carried checkpoints resume only under the same weight-shaping code."""
    where = Path(f"/proc/{pid}/cwd").resolve() if pid is not None else BENCH
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True)
    return out.stdout.strip()


def save(work: Path, carry: Path, max_mb: float) -> int:
    # The queue is paused while files are copied: checkpoints are renamed into place, but the files of a job
    # should come from one moment (a study record and the checkpoint it names).
    pid = runner_pid()
    was_paused = pid is not None and _stopped(pid)  # paused by bench/suite.py or by hand: left paused
    if pid is not None:
        os.killpg(pid, signal.SIGSTOP)
    try:
        files, skipped = {}, {}
        tmp = carry.with_name(carry.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for path in sorted(p for p in work.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(work)
            why = left_out(rel, path.stat().st_size, int(max_mb * 1e6), work)
            if why:
                skipped[rel.as_posix()] = why
                continue
            dest = tmp / "files" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            files[rel.as_posix()] = {"sha256": _sha256(dest), "bytes": dest.stat().st_size}
    finally:
        if pid is not None and not was_paused:
            os.killpg(pid, signal.SIGCONT)
    manifest = {
        "saved": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": queue_commit(pid),
        "files": files,
        "left_out": skipped,
    }
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(carry, ignore_errors=True)
    tmp.rename(carry)
    total = sum(f["bytes"] for f in files.values())
    print(f"carry: saved {len(files)} files, {total / 1e6:.1f} MB, to {carry} ({len(skipped)} left out, rebuilt)")
    return 0


def restore(work: Path, carry: Path) -> int:
    manifest_path = carry / "MANIFEST.json"
    if not manifest_path.is_file():
        print(f"carry: nothing to restore (no {manifest_path})")
        return 0
    manifest = json.loads(manifest_path.read_text())
    put, kept, bad = 0, 0, []
    for rel, meta in manifest["files"].items():
        src, dest = carry / "files" / rel, work / rel
        if dest.exists():
            kept += 1
            continue
        if not src.is_file() or _sha256(src) != meta["sha256"]:
            bad.append(rel)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".carry-tmp")
        shutil.copy2(src, tmp)
        tmp.replace(dest)
        put += 1
    print(f"carry: restored {put} files saved {manifest['saved']}; {kept} already there")
    print(
        f"carry: start the queue from the code its checkpoints were made by: git worktree add ../bench-tree {manifest['commit']}"
    )
    if bad:
        print(
            f"carry: error: {len(bad)} carried file(s) missing or not matching MANIFEST.json, e.g. {bad[0]}; "
            "fix: check out bench/carry again (git checkout -- bench/carry) or let the job start that step afresh"
        )
        return 1
    return 0


def carried_commit(carry: Path) -> str:
    """The commit of the code the carried checkpoints were made by (bench/queue_resume.py's worktree)."""
    return str(json.loads((carry / "MANIFEST.json").read_text())["commit"])


def status(work: Path, carry: Path) -> int:
    manifest_path = carry / "MANIFEST.json"
    if not manifest_path.is_file():
        print("carry: nothing saved")
        return 0
    manifest = json.loads(manifest_path.read_text())
    files = manifest["files"]
    missing = [r for r in files if not (work / r).exists()]
    print(
        f"carry: {len(files)} files, {sum(f['bytes'] for f in files.values()) / 1e6:.1f} MB, saved "
        f"{manifest['saved']} at {manifest['commit']}; {len(missing)} not in {work} (restore puts them back)"
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["save", "restore", "status"])
    p.add_argument("--work", default=str(WORK), help="the queue's working folder (default bench/_work)")
    p.add_argument("--to", default=str(CARRY), help="the carried folder (default bench/carry, committed)")
    p.add_argument("--max-mb", type=float, default=8.0, help="files larger than this are not carried")
    a = p.parse_args()
    work, carry = Path(a.work), Path(a.to)
    if a.action == "save":
        if not work.is_dir():
            raise SystemExit(f"carry: error: --work: {work} is not a folder; fix: point it at the queue's bench/_work")
        return save(work, carry, a.max_mb)
    return restore(work, carry) if a.action == "restore" else status(work, carry)


if __name__ == "__main__":
    sys.exit(main())
