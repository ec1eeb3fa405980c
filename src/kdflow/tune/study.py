"""The Optuna side: a study in DIR/study.db that a second run of the same command continues.

A trial left RUNNING by a killed process is marked FAIL and not counted; finished trials (complete or
pruned) are never re-run. One tune at a time per DIR (a lock the kernel drops when the process dies).
A study made for another config is refused before anything in DIR is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from kdflow.config import Config, flatten
from kdflow.errors import ConfigError
from kdflow.infra.fingerprint import differences
from kdflow.infra.io import atomic_write_json
from kdflow.infra.loaders import check_study_db, read_json_state

DB = "study.db"
IDENTITY = "study.json"
TEACHERS = "teachers.json"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# What a trial's result depends on; trial counts and timeouts may change between runs of one study.
IDENTITY_SECTIONS = ("data", "teacher", "distill", "train", "tune")
BUDGET_KEYS = {
    "tune.trials",
    "tune.timeout_s",
    "tune.scratch_trials",
    "tune.final.top_k",
    "tune.final.epochs",
    "tune.final.all_data",
    "tune.verdict_alpha",  # how the verdict reads the trials, not what they train
}


def identity(cfg: Config) -> dict[str, Any]:
    raw = {s: getattr(cfg, s).model_dump(mode="json") for s in IDENTITY_SECTIONS}
    return {k: v for k, v in flatten(raw).items() if k not in BUDGET_KEYS}


def check_identity(out: Path, cfg: Config) -> None:
    """Refuse DIR if it holds a study of another config (one line naming a field); touches nothing."""
    db, ident = out / DB, out / IDENTITY
    if not db.exists() and not ident.exists():
        return
    if not ident.is_file():
        raise ConfigError("--out", f"'{out}' holds a {DB} that kdflow tune did not write", "choose a new --out")
    recorded = read_json_state(ident, "--out", "restore the study's identity file, or choose a new --out")
    if not isinstance(recorded, dict):
        raise ConfigError("--out", f"'{ident}' is not a study identity", "choose a new --out")
    check_study_db(db)
    defaults = identity(Config())  # a field added by an upgrade, at its default, is the study it always was
    expected = {k: v for k, v in identity(cfg).items() if k in recorded or k not in defaults or v != defaults[k]}
    if recorded != expected:
        raise ConfigError(
            "--out",
            f"'{out}' holds a study of another config: {differences(recorded, expected, shown=1)}",
            "rerun with the study's config, or choose a new --out",
        )


def check_teachers(out: Path, shas: list[str]) -> None:
    """The study's teachers by content (sha256 of each checkpoint, the study's teacher first): the config names an
    extra teacher by its path, read again every run, so a continued study whose file there changed is refused
    rather than mixing trials of two ensembles. The first run records them."""
    path = out / TEACHERS
    if not path.is_file():
        atomic_write_json(path, shas)
        return
    recorded = read_json_state(path, "--out", "restore the study's teachers.json, or choose a new --out")
    fix = "restore that checkpoint, or choose a new --out"
    if not isinstance(recorded, list) or len(recorded) != len(shas):  # the count is in the identity: a damaged file
        raise ConfigError("--out", f"'{path}' does not list the study's {len(shas)} teachers", fix)
    for i, (was, now) in enumerate(zip(recorded, shas, strict=True)):
        if was != now:
            field = "teacher" if i == 0 else f"distill.extra_teachers[{i - 1}].source"
            raise ConfigError(
                field, f"'{out}' was studied with another file there (sha256 {was[:12]}, now {now[:12]})", fix
            )


def write_identity(out: Path, cfg: Config) -> None:
    if not (out / IDENTITY).is_file():
        atomic_write_json(out / IDENTITY, identity(cfg))


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".tune.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "--out", f"another kdflow tune is running on '{out}'", "wait for it, or choose another --out"
            ) from None
        yield


def _pruner(cfg: Config) -> optuna.pruners.BasePruner:
    tune = cfg.tune
    if len(tune.objectives) > 1 or tune.pruner == "none":
        return optuna.pruners.NopPruner()
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tune.space.epochs[1])
    return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=1)


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / DB).resolve()}"


def open_study(out: Path, name: str, cfg: Config, objectives: int, reap_running: bool = True) -> optuna.Study:
    """Create or load study ``name``. ``reap_running``: trials left RUNNING belong to a killed process
    (a local tune holds the lock); the pipeline's ask/tell rounds keep them, their pods are running them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url(out))
    directions: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"]
    directions = directions[:objectives]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    if reap_running:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)
    with warnings.catch_warnings():  # multivariate TPE is "experimental" in Optuna, and the better sampler here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=cfg.tune.seed * 100_003 + len(study.trials),  # a resumed study does not replay its first samples
            n_startup_trials=cfg.tune.startup_trials,
            multivariate=True,
            group=True,
        )
    study.pruner = _pruner(cfg)
    return study


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], Any], total: int, timeout: float | None) -> int:
    """Run trials until ``total`` have finished (counting earlier runs); returns how many ran now."""
    remaining = total - finished(study)
    before = len(study.trials)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=timeout, gc_after_trial=True)
    return len(study.trials) - before
