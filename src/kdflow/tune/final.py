"""The final rung of a multi-fidelity tune: the search's best trials trained again at full fidelity.

The search ranks students and recipes on short runs, on a subset when ``data.train_subset`` is set; short
runs do not always rank as full training does (at 15 epochs on all data the fixed recipes that won at 5
lost 0.7-1.0 pt to their scratch twin). With ``tune.final.top_k`` = k, the k best distillation trials (by
searched validation accuracy) are trained again for ``tune.final.epochs`` on the whole train split, and the
pick is the best of them on validation; the scratch twin's k best likewise, so the verdict compares both at
the length a user trains to. Validation only: test is never read. Each final run is kept in
``final/<study>-<trial>.json`` with its recipe, epochs and data digest, so a tune run again continues; a run
killed part-way (each is a full-length training, minutes to hours) continues from its last epoch's checkpoint
in ``final/runs/<study>-<trial>-<key>``, the key a hash of what the run depends on (recipe, split, the
weight-shaping code), so a changed one never resumes another run's weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import optuna

from kdflow.config import Config
from kdflow.infra.fingerprint import training_code_digest
from kdflow.infra.io import atomic_write_json
from kdflow.infra.loaders import read_json_state
from kdflow.tune.trial import Study, run_trial


def final_epochs(cfg: Config) -> int:
    return cfg.tune.final.epochs or cfg.epochs_for("student")


def final_config(cfg: Config) -> Config:
    """The config the final rung trains with: the whole train split, its epochs, one cached view per epoch."""
    f = cfg.model_copy(deep=True)
    if cfg.tune.final.all_data:
        f.data.train_subset = None
    epochs = final_epochs(cfg)
    f.tune.space.epochs = [epochs, epochs]
    f.tune.cache_views = 0  # one teacher view per epoch of the final schedule
    return f


class FinalRun:
    """One trial trained at the final fidelity: what :func:`kdflow.tune.run.finish` reads of a trial."""

    def __init__(self, number: int, params: dict[str, Any], user_attrs: dict[str, Any]):
        self.number, self.params, self.user_attrs = number, params, user_attrs


def read_record(path: Path) -> dict[str, Any] | None:
    """One final run's record (None where there is none); a corrupt one is refused in one line."""
    if not path.is_file():
        return None
    state = read_json_state(path, "--out", "remove the final/ directory of the study to train the final rung again")
    return state if isinstance(state, dict) else None


def _run_dir(record: Path, key: dict[str, Any]) -> Path:
    """The checkpoint folder of one final run; a kept folder of the same trial under another key (its
    recipe or split changed since it was killed) is removed."""
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    runs = record.parent / "runs"
    for stale in runs.glob(f"{record.stem}-*"):
        if stale.name != f"{record.stem}-{h}":
            shutil.rmtree(stale, ignore_errors=True)
    return runs / f"{record.stem}-{h}"


def pod_resume(
    cfg: Config, spec: dict[str, Any], params: dict[str, Any], digest: str, teacher_path: Path, pipeline_run_id: str
) -> tuple[Path, dict[str, Any]]:
    """Where a final run in its own pod (the cluster form) keeps its checkpoint, and what it depends on: in
    ``<storage.state_dir>/running/tune-final`` (a volume the pods share), so the pod retried after a lost node
    continues from the last epoch; the key also names the pipeline run, the config and the teacher's sha256."""
    from kdflow.infra import reuse, running
    from kdflow.infra.io import sha256_file

    key = {
        "pipeline_run_id": pipeline_run_id,
        "config": cfg.digest(),
        "teacher_sha256": sha256_file(teacher_path),
        "study": spec["kind"],
        "arch": spec["arch"],
        "trial": int(spec["number"]),
        "params": params,
        "data_digest": digest,
        "kdflow_code": training_code_digest(),
    }
    return running.folder(cfg.storage.state_dir, "tune-final", reuse.key(key)), key


def top_trials(trials: list[optuna.trial.FrozenTrial], k: int) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best completed trials by searched validation accuracy (ties: the earlier trial)."""
    return sorted(trials, key=lambda t: (-float(t.user_attrs["val_accuracy"]), t.number))[:k]


def record_path(out: Path, kind: str, number: int, arch: str | None = None) -> Path:
    return out / "final" / f"{kind}{f'-{arch}' if arch else ''}-{number:04d}.json"  # a twin's study per arch


def write_record(
    path: Path, epochs: int, digest: str, params: dict[str, Any], user_attrs: dict[str, Any], searched: float
) -> None:
    kept = {
        "epochs": epochs,
        "data_digest": digest,
        "params": params,
        "user_attrs": {**user_attrs, "searched_val_accuracy": searched},
    }
    atomic_write_json(path, kept)


def recorded(
    trials: list[optuna.trial.FrozenTrial],
    out: Path,
    kind: str,
    k: int,
    epochs: int,
    digest: str | None,
    arch: str | None = None,
) -> list[FinalRun]:
    """The final runs kept for the ``k`` best of ``trials`` at ``epochs`` (on the data of ``digest``; None: any,
    a study folder made in one pipeline run); a missing or stopped (diverged) one is left out."""
    runs = []
    for t in top_trials(trials, k):
        kept = read_record(record_path(out, kind, t.number, arch))
        params = {**t.params, "epochs": epochs}
        if kept is None or kept.get("params") != params or digest not in (None, kept.get("data_digest")):
            continue
        if "val_accuracy" in kept["user_attrs"] and "stopped" not in kept["user_attrs"]:
            runs.append(FinalRun(t.number, kept["params"], kept["user_attrs"]))
    return runs


def train_best(trials: list[optuna.trial.FrozenTrial], st: Study, kind: str, arch: str | None = None) -> list[FinalRun]:
    """The ``tune.final.top_k`` best of ``trials`` (completed, by searched val accuracy) trained again on the
    final study ``st``; a stopped one (diverged) is left out."""
    k = st.cfg.tune.final.top_k
    epochs, digest = st.cfg.tune.space.epochs[0], st.prepared.digest
    for t in top_trials(trials, k):
        path = record_path(st.out, kind, t.number, arch)
        params = {**t.params, "epochs": epochs}
        kept = read_record(path)
        if kept is None or (kept.get("params"), kept.get("data_digest")) != (params, digest):
            trial = optuna.trial.FixedTrial(params, number=t.number)
            print(f"[tune] final rung: {kind} trial {t.number} ({t.user_attrs['arch']}) at {epochs} epochs", flush=True)
            key = {"study": kind, "arch": arch, "trial": t.number, "params": params, "data_digest": digest}
            key["kdflow_code"] = training_code_digest()  # as every step checkpoint: other code, other weights
            try:
                run_trial(trial, st, kind, arch, resume_in=(_run_dir(path, key), key))
            except optuna.TrialPruned:  # diverged at full length: not a candidate
                pass
            if "resumed_from_epoch" in trial.user_attrs:
                print(
                    f"[tune] final rung: {kind} trial {t.number} resumed from epoch {trial.user_attrs['resumed_from_epoch']}"
                )
            write_record(path, epochs, digest, params, trial.user_attrs, t.user_attrs["val_accuracy"])
    return recorded(trials, st.out, kind, k, epochs, digest, arch)


def rows(runs: list[FinalRun], kind: str, chosen: FinalRun | None) -> list[dict[str, Any]]:
    """final.csv: each final run beside its searched score."""
    return [
        {
            "study": kind,
            "trial": r.number,
            "arch": r.user_attrs["arch"],
            "searched_val_accuracy": r.user_attrs["searched_val_accuracy"],
            "final_val_accuracy": r.user_attrs["val_accuracy"],
            "epochs": r.params["epochs"],
            "pick": "*" if r is chosen else "",
        }
        for r in runs
    ]
