"""The step manifest: what a step directory holds, who wrote it, and whether it finished.

Every step claims its output directory before writing (:func:`claim`): the manifest says "in progress",
with the step's name and (for training steps) its fingerprint. It says "complete" last (:func:`complete`),
listing the sha256 of every output and the identity of every input it consumed. A directory is thereby
bound to one identity: a later run of another step or another fingerprint into it is refused (or, with
--fresh, the earlier outputs are removed first), files the earlier run left are removed before this run
writes, and a consumer (:func:`verify`) refuses a step that never finished or whose files changed since.
Publishing to the reuse store takes exactly the manifest's files.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from kdflow.errors import CheckpointError, ConfigError
from kdflow.infra.fingerprint import differences
from kdflow.infra.io import atomic_write_json, read_json, sha256_file

MANIFEST = "step-manifest.json"
IN_PROGRESS, COMPLETE = "in_progress", "complete"
# The steps whose directory holds a model another step may consume (a teacher, a student, an assistant).
MODEL_STEPS = (
    "train_teacher",
    "train_student_scratch",
    "distill_student",
    "distill_assistant",
    "train_student_selftrain",
    "distill_student_labels_only",
)
# Kept across a resume and never an output: the trainer's resumable state.
RESUME_STATE = "train_state"
# Directories this process claimed afresh and has not completed: (the directory, the first one the claim created).
_OPEN_CLAIMS: list[tuple[Path, Path | None]] = []


def read(out: Path) -> dict[str, Any] | None:
    """The manifest of ``out``, or None when it has none; a damaged manifest is a one-line error."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(str(path), f"unreadable step manifest ({e})", "rerun the step with --fresh") from None
    if not isinstance(manifest, dict) or "step" not in manifest or "status" not in manifest:
        raise CheckpointError(str(path), "not a kdflow step manifest", "rerun the step with --fresh")
    return manifest


def _nested_step(path: Path, out: Path) -> bool:
    """A sub-directory holding a step of its own (the assistant inside the student's directory)."""
    for parent in path.parents:
        if parent == out:
            return False
        if (parent / MANIFEST).is_file():
            return True
    return False


def output_files(out: Path) -> list[str]:
    """The step's own files under ``out`` (relative, sorted): not the manifest, the resume state, temporary
    files or a nested step's directory."""
    out = Path(out)
    found = []
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        if not path.is_file() or rel.parts[0] == RESUME_STATE or path.name == MANIFEST:
            continue
        if path.name.startswith(".") or _nested_step(path, out):
            continue
        found.append(rel.as_posix())
    return sorted(found)


def _remove(out: Path, names: list[str]) -> None:
    for name in names:
        (out / name).unlink(missing_ok=True)


def check_writable(out: Path, field: str = "--out") -> None:
    """--out must be a directory this process can write (or one it can create), before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(field, f"'{out}' is a file, not a directory", "choose a directory for the step's outputs")
    probe_dir = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe_dir.is_dir():
        raise ConfigError(field, f"'{probe_dir}' is a file, not a directory", "choose a directory for the outputs")
    try:  # a real write: permission bits say nothing to root, and a read-only mount shows only here
        with tempfile.TemporaryFile(dir=probe_dir, prefix=".kdflow-probe-"):
            pass
    except OSError as e:
        raise ConfigError(
            field, f"'{probe_dir}' is not writable ({e.strerror})", "choose a writable directory"
        ) from None


def claim(out: Path, step: str, fingerprint: dict | None = None, fresh: bool = False) -> str:
    """Make ``out`` this step's directory before it writes anything; returns 'new', 'resume' or 'replace'.

    - the same step and fingerprint, not finished: resume (its files are this identity's: kept);
    - the same step and fingerprint, finished: its outputs are removed and the step runs again;
    - another step or fingerprint: refused, unless ``fresh`` (then its outputs are removed first);
    - files and no manifest: refused unless ``fresh`` and the directory is kdflow's (a step.json).
    """
    out = Path(out)
    check_writable(out)
    created = next((p for p in [*reversed(out.parents), out] if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    prior = read(out)
    leftovers = output_files(out)
    how = "new"
    if prior is None:
        if leftovers and not (fresh and "step.json" in leftovers):
            kdflows = "step.json" in leftovers
            raise ConfigError(
                "--out",
                f"'{out}' holds {len(leftovers)} file(s) without a step manifest (e.g. {leftovers[0]})"
                + (": outputs of an earlier kdflow" if kdflows else ""),
                "pass --fresh to replace them" if kdflows else "choose an empty or new directory",
            )
        if leftovers or (out / RESUME_STATE).exists():
            how = "replace"
    else:
        same = prior["step"] == step and prior.get("fingerprint") == fingerprint
        if not same and not fresh:
            what = (
                f"outputs of step {prior['step']}"
                if prior["step"] != step
                else f"a {prior['status'].replace('_', ' ')} step of another run: "
                + differences(prior.get("fingerprint"), fingerprint or {})
            )
            raise ConfigError("--out", f"'{out}' holds {what}", "pass --fresh to replace them, or choose a new --out")
        if same and prior["status"] == IN_PROGRESS and not fresh:
            how = "resume"
        else:
            how = "replace"
    if how == "replace":
        _remove(out, leftovers)
        if fresh or prior is None or prior["step"] != step:
            shutil.rmtree(out / RESUME_STATE, ignore_errors=True)
    if how != "resume":
        atomic_write_json(
            out / MANIFEST, {"step": step, "status": IN_PROGRESS, "fingerprint": fingerprint, "started": time.time()}
        )
    if how == "new":
        _OPEN_CLAIMS.append((out, created))
    return how


def withdraw_open_claims() -> None:
    """After a user error (the CLI's one-line exit): a directory this process claimed afresh and never completed
    loses its manifest, and what the claim created is removed when nothing was written into it, so a refused
    run leaves nothing behind. A crash (kill -9) withdraws nothing: the in-progress manifest marks it."""
    while _OPEN_CLAIMS:
        out, created = _OPEN_CLAIMS.pop()
        try:
            manifest = read(out)
        except CheckpointError:
            continue
        if manifest is None or manifest["status"] != IN_PROGRESS:
            continue
        (out / MANIFEST).unlink(missing_ok=True)
        if created is not None and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)


def complete(out: Path, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mark ``out`` complete: the sha256 of every output file and what the step consumed."""
    out = Path(out)
    prior = read(out) or {}
    manifest = {
        "step": prior.get("step", "?"),
        "status": COMPLETE,
        "fingerprint": prior.get("fingerprint"),
        "started": prior.get("started"),
        "completed": time.time(),
        "inputs": inputs if inputs is not None else prior.get("inputs", {}),
        "outputs": {name: sha256_file(out / name) for name in output_files(out)},
    }
    atomic_write_json(out / MANIFEST, manifest)
    _OPEN_CLAIMS[:] = [c for c in _OPEN_CLAIMS if c[0] != out]
    return manifest


def verify(out: Path, steps: tuple[str, ...], field: str, required: bool = True) -> dict[str, Any] | None:
    """The complete manifest of a step directory another step consumes, with every output's sha256 checked.

    Refused in one line: a directory of another step, one never finished, a file changed or missing since.
    A directory without a manifest is refused when ``required`` (else None: a directory made by hand)."""
    out = Path(out)
    manifest = read(out)
    if manifest is None:
        if required:
            raise CheckpointError(
                field, f"'{out}' has no {MANIFEST}: not a finished kdflow step", "rerun the step that writes it"
            )
        return None
    if manifest["step"] not in steps:
        raise CheckpointError(
            field,
            f"'{out}' holds step {manifest['step']}, not {' or '.join(steps)}",
            "pass that step's output directory",
        )
    if manifest["status"] != COMPLETE:
        raise CheckpointError(field, f"'{out}': step {manifest['step']} never finished", "rerun it to completion")
    for name, digest in manifest.get("outputs", {}).items():
        path = out / name
        if not path.is_file():
            raise CheckpointError(field, f"'{path}' is missing since the step finished", "rerun the step")
        if sha256_file(path) != digest:
            raise CheckpointError(field, f"'{path}' changed since the step finished", "rerun the step")
    return manifest
