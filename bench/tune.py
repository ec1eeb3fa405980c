"""Automated distillation measured: does the tuned pick beat its tuned scratch twin, and at what cost?

Multi-fidelity on 2 cores: the study searches on a subset of the train split with short schedules
(``--subset``, ``--search-epochs``; both studies, the same trial budget), then the pick and its scratch twin
are trained with their tuned recipes at the protocol's length (``--final-epochs``, the whole train split)
on ``--seeds``, and their test accuracy is reported once per final model. Selection reads validation only.
The teacher is the protocol's (``--work`` holds ``data/`` and ``teacher/`` as bench/protocol.py leaves them).

    .venv/bin/python bench/tune.py --profile tune --out local_outputs/tune   # the `make tune` study, 3 seeds
    .venv/bin/python bench/tune.py --work bench/_work/full --name under-100k-rung --final-top-k 2 --seeds 0,1,2
    .venv/bin/python bench/tune.py --work bench/_work/full --name mlp-plain --students mlp --subset 0 --no-augment

``--patient-epochs N`` then trains the pick and its twin again at N epochs (patient, consistent distillation,
Beyer et al. 2022: the student sees the cached views its teacher's logits were computed on, cycled over the
longer schedule; ``--final-views`` sets how many) on ``--patient-seeds``, into the section "Patient
distillation: NAME", beside the same seeds at ``--final-epochs``; ``--patient-mix mixup`` adds the pick with
function matching (teacher and student see one mixed image) against the same twin. ``--dfad-seeds`` distils the pick
data-free from the same teacher (section "Data-free distillation: NAME"). ``--progress`` trains nothing and
writes the section from what a running (or stopped) study has finished. ``--no-augment``: no crop or flip.
``--extra-teachers N``: the study (search, rung, finals) learns from the protocol's teacher and N more resnet20s.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import ROOT, fmt, fmt_pt  # noqa: E402
from results import RESULTS, write_section  # noqa: E402
from tune_args import parse_args  # noqa: E402
from tune_progress import progress_section  # noqa: E402
from tune_runs import data_free, trained, with_view  # noqa: E402
from tune_verdict import verdict_lines  # noqa: E402

from kdflow import steps  # noqa: E402
from kdflow.config import load_config  # noqa: E402
from kdflow.tune import tune  # noqa: E402


def _search(a, work: Path, out: Path):
    if a.profile:  # a config profile's own study (e.g. what `make tune` runs), continued if already there
        timing = out / "bench_wall.json"
        fresh = not (out / "study.db").exists()
        t0 = time.time()
        result = tune(load_config(ROOT / "configs" / "fashion_mnist.yaml", a.profile, []), out)
        if fresh:  # the whole tune from nothing: data, teacher, cache, both studies
            timing.write_text(json.dumps({"seconds": time.time() - t0}))
        return result, json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
    sets = [
        "tracking.enabled=false",
        f"storage.state_dir={work / 'state'}",
        f"teacher.source={(work / 'teacher' / 'model.pt').resolve()}",
        f"tune.trials={a.trials}",
        f"tune.space.epochs=[{a.search_epochs},{a.search_epochs}]",
        f"tune.space.students=[{a.students}]",
        f"tune.space.mix=[{a.mix}]",
        f"tune.startup_trials={a.startup}",
        "tune.objectives=[val_accuracy]",  # pruning on: the front is still drawn from the completed trials
    ]
    if a.subset:
        sets.append(f"data.train_subset={a.subset}")
    if a.final_top_k:  # kdflow tune's final rung: the pick chosen among the k best at the final length
        sets += [f"tune.final.top_k={a.final_top_k}", f"tune.final.epochs={a.final_epochs}"]
    if a.cache_views:
        sets.append(f"tune.cache_views={a.cache_views}")
    sets.append(f"tune.max_params={a.max_params or 'null'}")  # 0: no size budget
    sets += ["data.augment=false"] if a.no_augment else []  # the study preps its split without (same samples)
    sets += [f"tune.space.augment=[{a.augment}]"] if a.augment else []  # the train view searched as a knob
    if a.extra_teachers:  # an ensemble: the protocol's teacher and more of its recipe on seeds 1.. (cached)
        from ensemble_teacher import train_teachers

        more = train_teachers(work, 1 + a.extra_teachers)[1:]
        sets.append(
            f"distill.extra_teachers=[{', '.join(f'{{arch: resnet20, source: {p.resolve()}/model.pt}}' for p in more)}]"
        )
    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", "full", sets)
    t0 = time.time()
    result = tune(cfg, out)
    return result, time.time() - t0


def final_config(best: Path, work: Path, a, seed: int, extra: list[str] | None = None):
    """The pick's best.yaml set for a final run at ``a.final_epochs`` on the whole train split (with --profile or
    --final-as-searched: as the study trained it), seed ``seed``, with ``extra`` overrides on top."""
    sets = ["tracking.enabled=false", f"train.seed={seed}", *(extra or [])]
    if not (a.profile or a.final_as_searched):
        sets += [
            f"storage.state_dir={work / 'state'}",
            "data.train_subset=null",
            f"student.epochs={a.final_epochs}",
            f"scratch_twin.epochs={a.final_epochs}",
            f"distill.cache_views={a.final_views or a.final_epochs}",
            f"distill.cache_dir={work / 'state' / 'teacher_cache'}",
        ]
    return load_config(best, None, sets)


def final_data(cfg, best: Path, work: Path, a) -> Path:
    """The prepared split a final run trains on: the protocol's, in the view the pick was tuned with."""
    rung = best.parent / "final" / "data"  # unaugmented: the study's own prep of the whole split (rung or search)
    own = best.parent / "data" if a.profile or a.final_as_searched else rung if rung.is_dir() else best.parent / "data"
    data_dir = own if (a.profile or a.final_as_searched or a.no_augment) else work / "data"
    if not (a.profile or a.final_as_searched):
        data_dir = with_view(cfg, data_dir)  # the pick searched another view: the split prepared with it
    return data_dir


def _final(best: Path, work: Path, a, seed: int, out: Path, mix: str = "") -> dict[str, dict]:
    """The pick (distilled) and its scratch twin at the protocol's length on the whole train split
    (with --profile: exactly as the study trained them, on the study's data, other seeds). ``mix``: the pick
    with function matching (train.mix) into OUT-MIX; its twin is the one without (scratch_twin.mix is its own)."""
    cfg = final_config(best, work, a, seed, [f"train.mix={mix}"] if mix else [])
    data_dir = final_data(cfg, best, work, a)
    runs = {
        "distill": trained(
            out.with_name(f"{out.name}-{mix}" if mix else out.name) / f"distill-seed{seed}",
            lambda d: steps.distill(cfg, data_dir, work / "teacher" / "model.pt", d),
        ),
        "scratch": trained(out / f"scratch-seed{seed}", lambda d: steps.train(cfg, "scratch", data_dir, d)),
    }
    for kind, m in runs.items():
        print(f"final {kind} seed {seed}: test {m['test_accuracy']:.4f}", flush=True)
    return runs


def patient(a, result, work: Path, out: Path, finals: dict[int, dict]) -> None:
    """The pick and its twin at ``--patient-epochs`` (gain at equal epochs), beside the finals of the same seeds."""
    seeds = [int(s) for s in a.patient_seeds.split(",")]
    long = argparse.Namespace(**{**vars(a), "final_epochs": a.patient_epochs})
    runs = {s: _final(result.best_yaml, work, long, s, out / f"patient-{a.patient_epochs}") for s in seeds}
    mixed = {
        s: _final(result.best_yaml, work, long, s, out / f"patient-{a.patient_epochs}", a.patient_mix)
        for s in (seeds if a.patient_mix else [])
    }
    rows = []
    for epochs, found in (
        (a.final_epochs, finals),
        (a.patient_epochs, runs),
        (f"{a.patient_epochs}, {a.patient_mix} function matching", mixed),
    ):
        have = [s for s in seeds if s in found]
        if not have:
            continue
        kd = [found[s]["distill"]["test_accuracy"] for s in have]
        twin = [found[s]["scratch"]["test_accuracy"] for s in have]
        gains = [k - t for k, t in zip(kd, twin, strict=True)]
        wall = sum(found[s][k]["seconds"] for s in have for k in ("distill", "scratch")) / len(have)
        seeds_text = ",".join(map(str, have))
        rows.append(f"| {epochs} | {fmt(kd)} | {fmt(twin)} | {fmt_pt(gains)} | {wall / 60:.1f} | {seeds_text} |")
    views = a.final_views or a.patient_epochs
    body = [
        f"The pick of `{a.name}` (`{result.pick['arch']}`, {result.pick['params']:,} params) distilled with its tuned "
        f"recipe from the protocol's resnet20 teacher, and its tuned scratch twin, on the whole train split; "
        f"{views} cached teacher view(s) cycled over the schedule; test accuracy once per final model."
        + (
            f" Function matching (Beyer et al. 2022): the pick again with {a.patient_mix} (teacher and student see "
            f"one mixed image; the cached views hold the teacher's logits of the mixed images), its recipe otherwise "
            f"unchanged, against the same twin (its tuned recipe, no mixing)."
            if a.patient_mix
            else ""
        ),
        "",
        "| epochs | distilled | scratch twin | KD gain (paired) | wall per seed, both models (min) | seeds |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    write_section(f"Patient distillation: {a.name}", "\n".join(body))
    print("\n".join(body))


def main() -> int:
    a = parse_args(__doc__)
    if a.profile:
        out = work = Path(a.out or "local_outputs/tune")
        a.name = a.profile
    else:
        work = Path(a.work)
        ready = (work / "teacher" / "model.pt").is_file() and (work / "data" / "manifest.json").is_file()
        if not ready and not a.progress:  # --progress reads the study's records only
            raise SystemExit(f"error: --work: no data/ and teacher/ under {work}; fix: run bench/protocol.py first")
        if a.no_augment and a.subset and not a.final_top_k:
            raise SystemExit("error: --no-augment: the finals train on the study's own split; fix: --subset 0")
        out = work / "tune" / a.name
    if a.progress:
        command = " ".join(["bench/tune.py", *(x for x in sys.argv[1:] if x != "--progress")])
        body = progress_section(out, command)
        write_section(f"Automated distillation: {a.name}", body)
        print(body)
        return 0
    result, wall = _search(a, work, out)
    seeds = [] if a.no_final else [int(s) for s in a.seeds.split(",")]
    finals: dict[int, dict] = {}
    report(a, out, result, wall, finals, seeds)  # the search and its rung now; each final seed as it ends
    for s in seeds:
        finals[s] = _final(result.best_yaml, work, a, s, out / "final")
        report(a, out, result, wall, finals, seeds)
    if a.patient_epochs:
        patient(a, result, work, out, finals)
    if a.dfad_seeds:
        data_free(a, result, work, out, finals)
    return 0


def report(a, out: Path, result, wall: float, finals: dict[int, dict], seeds: list[int]) -> None:
    """The study's section of RESULTS.md from what is finished: rewritten after the search and after each final
    seed, so a run stopped for hours leaves its partial results (with their seeds) in RESULTS.md."""
    rows = list(csv.DictReader((out / "trials.csv").open()))
    walls = [float(r["wall_s"]) for r in rows if r["wall_s"]]
    if not a.profile:  # a resumed study's search took no time: count the trials' own wall time
        wall = sum(walls)
    done = [r for r in rows if r["state"] in ("complete", "pruned")]
    shutil.copy(out / "pareto.png", RESULTS.parent / f"tune-{a.name}-pareto.png")  # beside the section
    have = [s for s in seeds if s in finals]
    kd = [finals[s]["distill"]["test_accuracy"] for s in have]
    twin = [finals[s]["scratch"]["test_accuracy"] for s in have]
    gains = [k - t for k, t in zip(kd, twin, strict=True)]
    done_seeds = ",".join(map(str, have))
    final_rows = (
        [
            f"| pick, distilled | {fmt(kd)} | {done_seeds} |",
            f"| its scratch twin (tuned) | {fmt(twin)} | {done_seeds} |",
            f"| KD gain (paired by seed) | {fmt_pt(gains)} | {done_seeds} |",
        ]
        if have
        else []
    )
    if len(have) < len(seeds):
        pending = ",".join(str(s) for s in seeds if s not in finals)
        final_rows.append(f"| (partial: the finals of seed(s) {pending} are still running) | - | - |")
    if not seeds:
        final_rows = ["| (the final, protocol-length runs were not made in this measurement) | - | - |"]
    pick, tw = result.pick, result.twin or {}
    front = list(csv.DictReader((out / "pareto.csv").open()))
    cfg = load_config(result.best_yaml)
    setting = (
        f"Search: the `{a.profile}` profile as is ({cfg.tune.trials} distillation trials + as many scratch-twin trials, "
        f"{cfg.tune.space.epochs} epochs, {cfg.data.train_subset or 'all'} train samples, teacher {cfg.teacher.arch}, "
        f"students {cfg.tune.space.students}, budget {cfg.tune.max_params} parameters). Final: the pick and its twin "
        f"retrained exactly as tuned on seeds {a.seeds} (seed 0 is the study's own run), test reported once per model."
        if a.profile
        else None
    )
    schedule = (
        f"{cfg.tune.space.epochs[1]} epochs on {f'{cfg.data.train_subset:,}' if cfg.data.train_subset else 'all'} train samples"
        if a.profile
        else f"{a.search_epochs} epochs on {f'{a.subset:,}' if a.subset else 'all'} train samples"
    )
    body = [
        setting
        or f"Search: {a.trials} distillation trials + as many scratch-twin trials, {a.search_epochs} epochs each on "
        f"{a.subset or 'all'} train samples (students `{a.students}`, budget {f'{a.max_params:,} parameters' if a.max_params else 'none'}, mix `{a.mix}`{', no crop or flip' if a.no_augment else ''}{f', train view searched: augment {a.augment}' if a.augment else ''}), "
        f"the protocol's resnet20 teacher{f' and {a.extra_teachers} more (an ensemble, mean of probabilities)' if a.extra_teachers else ''} cached (views shared by every trial). Final: the pick and its twin with their "
        + (
            f"tuned recipes, {a.final_epochs} epochs on the whole train split "
            f"({a.final_views or a.final_epochs} cached teacher view(s)), seeds {a.seeds}."
            if not a.final_as_searched
            else f"tuned recipes exactly as searched ({a.search_epochs} epochs, {a.subset or 'all'} train samples), "
            f"seeds {a.seeds}, test reported once per model."
            + (
                ""
                if a.search_epochs >= a.final_epochs and not a.subset
                else " Caveat: not the protocol's 15 epochs on all 55,000 samples (a 15-epoch final of this "
                "student costs ~25 min per model here and did not fit the session)."
            )
        ),
        "",
        f"- {'whole tune (data, teacher, cache, both studies)' if a.profile else 'trials (sum of trial walls)'} wall: "
        f"{wall / 60:.1f} min for {len(rows)} trials ({len(done)} finished; "
        f"{3600 * len(rows) / wall:.1f} trials/hour; median trial {sorted(walls)[len(walls) // 2]:.0f} s)",
        f"- pick: `{pick['arch']}` ({pick['params']:,} params), recipe `{json.dumps(pick['recipe'])}`",
        f"- its scratch twin's tuned recipe: `{json.dumps(tw.get('recipe', {}))}`",
        (
            f"- final rung (validation, the {a.final_top_k} best of each study at {a.final_epochs} epochs on all data, "
            f"final.csv): distilled {100 * pick['val_accuracy']:.2f}% vs twin"
            if a.final_top_k
            else f"- search (validation, {schedule}): distilled {100 * pick['val_accuracy']:.2f}% vs twin"
        )
        + f" {100 * tw.get('val_accuracy', float('nan')):.2f}%",
        *verdict_lines(result, kd, twin, done_seeds, a.target_acc, a.target_gain),
        "",
        "| final model | test accuracy | seeds |",
        "|---|---|---|",
        *final_rows,
        "",
        f"Pareto front of the search (validation accuracy, {schedule}):",
        "",
        "| trial | student | val acc | params | MACs |",
        "|---|---|---|---|---|",
        *(
            f"| {r['number']}{' (pick)' if r['pick'] == 'True' else ''} | {r['arch']} | "
            f"{100 * float(r['val_accuracy']):.2f}% | {int(r['params']):,} | {int(r['macs']):,} |"
            for r in front
        ),
        "",
        f"![Pareto front](tune-{a.name}-pareto.png)",
    ]
    write_section(f"Automated distillation: {a.name}", "\n".join(body))
    print("\n".join(body), flush=True)


if __name__ == "__main__":
    sys.exit(main())
