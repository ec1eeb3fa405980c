"""What a study of bench/tune.py has finished so far, read from its records (trains nothing).

The studies of #28 run for hours across sessions in the background queue; their section of RESULTS.md is
otherwise written only once the search and its final rung are over. This reads the Optuna store
(``study.db``: every finished search trial with its validation accuracy), the final rung's records
(``final/<study>-<trial>.json``) and the finals already trained (``final/{distill,scratch}-seedN``), so the
section shows partial results, with their seeds, while the study goes on. Validation only for the search and
the rung (what selection reads); test only for the finals, once per model.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from kdflow.tune.study import DB, storage_url


def _search_rows(out: Path) -> list[str]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url(out))
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE and "val_accuracy" in t.user_attrs]
        states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        counts = ", ".join(f"{n} {k}" for k, n in states.items() if n)
        if done:
            best = max(done, key=lambda t: (float(t.user_attrs["val_accuracy"]), -t.number))
            a = best.user_attrs
            lead = f"trial {best.number} `{a.get('arch', '')}` ({int(a.get('params', 0)):,} params), {100 * float(a['val_accuracy']):.2f}%"
        else:
            lead = "-"
        rows.append(f"| {summary.study_name} | {counts} | {lead} |")
    return rows


def _rung_rows(out: Path) -> list[str]:
    rows = []
    for path in sorted((out / "final").glob("*.json")):
        kept = json.loads(path.read_text())
        a = kept.get("user_attrs", {})
        final = f"{100 * float(a['val_accuracy']):.2f}%" if "val_accuracy" in a else "stopped (diverged)"
        searched = a.get("searched_val_accuracy")
        rows.append(
            f"| {path.stem} | `{a.get('arch', '')}` | {100 * float(searched):.2f}% | {kept.get('epochs')} | {final} |"
            if searched is not None
            else f"| {path.stem} | `{a.get('arch', '')}` | - | {kept.get('epochs')} | {final} |"
        )
    return rows


def _final_rows(out: Path) -> list[str]:
    rows = []
    for d in sorted((out / "final").glob("*-seed*")):
        metrics = d / "metrics.json"
        if metrics.is_file():
            rows.append(f"| {d.name} | {100 * json.loads(metrics.read_text())['test_accuracy']:.2f}% |")
    return rows


def progress_section(out: Path, command: str) -> str:
    """The study's section while it runs: the search per study, the final rung's runs, the finals trained."""
    if not (out / DB).is_file():
        raise SystemExit(f"error: --progress: no study under {out}; fix: start the study first (the same command)")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"**In progress** (partial results read from the study's records at {now} by `bench/tune.py --progress`; "
        f"the study continues in the background queue, resumably: `{command}`). Search and final rung: validation "
        "accuracy, what selection reads; finals: test accuracy, once per model.",
        "",
        "| search study | trials | best so far (validation, search schedule) |",
        "|---|---|---|",
        *(_search_rows(out) or ["| (no trial finished yet) | - | - |"]),
    ]
    rung = _rung_rows(out)
    if rung:
        body += [
            "",
            "| final rung run | student | searched val | epochs | val at full length |",
            "|---|---|---|---|---|",
            *rung,
        ]
    finals = _final_rows(out)
    if finals:
        body += ["", "| final model (seed) | test accuracy |", "|---|---|", *finals]
    return "\n".join(body)
