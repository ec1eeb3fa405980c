"""A study's outputs: trials.csv, the Pareto front (pareto.csv, pareto.png), the pick and its twin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdflow.infra.io import atomic_write_text, csv_text

COST_LABELS = {"params": "parameters", "macs": "MACs per image", "latency_ms": "ONNX batch-1 latency (ms)"}


def trial_rows(study: optuna.Study, kind: str) -> list[dict[str, Any]]:
    names = sorted({p for t in study.trials for p in t.params})
    rows = []
    for t in study.trials:
        a = t.user_attrs
        rows.append(
            {
                "study": kind,
                "number": t.number,
                "state": t.state.name.lower(),
                "arch": a.get("arch", ""),
                **{n: t.params.get(n, "") for n in names},
                "val_accuracy": a.get("val_accuracy", ""),
                "params": whole(a.get("params", "")),
                "macs": whole(a.get("macs", "")),
                "latency_ms": a.get("latency_ms", ""),
                "wall_s": round(a["wall_s"], 2) if "wall_s" in a else "",
                "stopped": a.get("stopped", ""),
            }
        )
    return rows


def whole(v: Any) -> Any:
    """Counts come back from a pipeline pod's JSON as floats: print them as the integers they are."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def complete(study: optuna.Study) -> list[FrozenTrial]:
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "val_accuracy" in t.user_attrs
    ]


def pareto_front(trials: list[FrozenTrial], cost: str) -> list[FrozenTrial]:
    """Trials no other trial beats on both: higher (or equal) val accuracy at lower (or equal) cost."""

    def acc(t: FrozenTrial) -> float:
        return float(t.user_attrs["val_accuracy"])

    def c(t: FrozenTrial) -> float:
        return float(t.user_attrs[cost])

    front = [
        t
        for t in trials
        if not any(acc(o) >= acc(t) and c(o) <= c(t) and (acc(o) > acc(t) or c(o) < c(t)) for o in trials if o is not t)
    ]
    return sorted(front, key=c)


def pick(trials: list[Any], cost: str) -> Any:
    """Highest validation accuracy; a tie goes to the cheaper student, then the earlier trial (of a study's
    FrozenTrials, or of the final rung's runs); None when there are none."""
    if not trials:
        return None
    return min(trials, key=lambda t: (-float(t.user_attrs["val_accuracy"]), float(t.user_attrs[cost]), t.number))


def pareto_rows(front: list[FrozenTrial], chosen: FrozenTrial | None) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "arch": t.user_attrs["arch"],
            "val_accuracy": t.user_attrs["val_accuracy"],
            "params": whole(t.user_attrs["params"]),
            "macs": whole(t.user_attrs["macs"]),
            "latency_ms": t.user_attrs.get("latency_ms", ""),
            "pick": chosen is not None and t.number == chosen.number,
        }
        for t in front
    ]


def write_tables(out: Path, rows: list[dict[str, Any]], front_rows: list[dict[str, Any]]) -> None:
    atomic_write_text(out / "trials.csv", csv_text(_rectangular(rows)))
    atomic_write_text(out / "pareto.csv", csv_text(front_rows) if front_rows else "number,arch,val_accuracy\n")


def _rectangular(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Both studies in one table: every row gets every column."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return [{k: r.get(k, "") for k in columns} for r in rows]


def plot_pareto(
    path: Path, trials: list[FrozenTrial], costs: list[str], chosen: FrozenTrial | None, twin_acc: float | None
) -> Path:
    from kdflow.evaluation.metrics import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 4.2), squeeze=False)
    for ax, cost in zip(axes[0], costs, strict=True):
        xs = [float(t.user_attrs[cost]) for t in trials]
        ys = [100 * float(t.user_attrs["val_accuracy"]) for t in trials]
        ax.scatter(xs, ys, s=18, c="0.6", label="completed trials")
        front = pareto_front(trials, cost)
        ax.plot(
            [float(t.user_attrs[cost]) for t in front],
            [100 * float(t.user_attrs["val_accuracy"]) for t in front],
            "-o",
            c="tab:blue",
            ms=4,
            label="Pareto front",
        )
        if chosen is not None:
            ax.scatter(
                [float(chosen.user_attrs[cost])],
                [100 * float(chosen.user_attrs["val_accuracy"])],
                marker="*",
                s=220,
                c="tab:red",
                zorder=5,
                label=f"pick: {chosen.user_attrs['arch']}",
            )
        if twin_acc is not None:
            ax.axhline(100 * twin_acc, ls="--", c="tab:green", lw=1, label="pick's scratch twin (tuned)")
        ax.set_xscale("log" if cost != "latency_ms" else "linear")
        ax.set_xlabel(COST_LABELS[cost])
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("kdflow tune: distilled students, accuracy against cost")
    return save_figure(fig, path)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no completed trial)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# Below this lead over the twin on validation the teacher has little to teach: the "why" says so first.
SMALL_TEACHER_LEAD = 0.01


def why_it_did_not_pay(pick: dict[str, Any], twin: dict[str, Any], teacher_acc: float | None = None) -> str | None:
    """The figures behind a "does not pay" (None without the twin's training accuracy): whether the teacher
    stands far enough above the twin to teach it anything (its validation accuracy, where known), whether the
    twin underfits (its last-epoch training accuracy, on training batches, at or below its validation accuracy:
    the student's capacity limits it, not the teacher's signal), and how much teacher the kept recipe uses."""
    train, val = twin.get("train_accuracy"), float(twin["val_accuracy"])
    if train is None:
        return None
    recipe = pick.get("recipe", {})
    kept = (
        f"the distillation recipe the search kept weighs the labels {recipe['alpha']:.2f} at T {recipe['temperature']:.2f}"
        if "alpha" in recipe and "temperature" in recipe
        else ""
    )
    figures = f"last-epoch training accuracy {100 * float(train):.2f}%, validation {100 * val:.2f}%"
    lead = None if teacher_acc is None else float(teacher_acc) - val
    if lead is not None and lead < SMALL_TEACHER_LEAD:
        return (
            f"why: the teacher leads the twin by only {100 * lead:+.2f} pt on validation ({100 * (val + lead):.2f}% "
            f"vs {100 * val:.2f}%): it has little to teach this student; a stronger teacher (or an ensemble: "
            f"distill.extra_teachers) is where distillation can pay (the twin: {figures})"
            + (f"; {kept}" if kept else "")
        )
    led = "" if lead is None else f"; the teacher leads it by {100 * lead:+.2f} pt on validation"
    if float(train) <= val:
        return (
            f"why: the scratch twin underfits ({figures}{led}): {twin['arch']} ({whole(twin.get('params', 0)):,} params) is "
            "capacity-bound and the teacher's extra signal has nowhere to go"
            + (f"; {kept}" if kept else "")
            + "; a larger student is where distillation can pay"
        )
    return (
        f"why: the scratch twin is not capacity-bound ({figures}{led}): the teacher's soft targets added nothing the "
        "labels did not at this budget" + (f" ({kept})" if kept else "")
    )
