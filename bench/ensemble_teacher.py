"""A stronger teacher for a tuned pick: does an ensemble of resnet20 teachers lift the KD gain over its twin?

The under-100K study's verdict said why its gain was small: the protocol's resnet20 teacher leads the tuned
scratch twin by only +0.62 pt on validation (93.90% vs 93.28%): it has little to teach an 80K-parameter
student. This trains ``--teachers - 1`` more resnet20 teachers with the protocol's recipe on other seeds
(the split and recipe of bench/protocol.py, resumable), reports each teacher and their ensemble (mean of
probabilities) on validation and test, and distils the study's pick with its tuned recipe from the ensemble
(live, or ``--cached``: a cache file per teacher) at the finals' length on ``--seeds``, on the split its finals
trained on (the pick's train view). The twin does not depend on the teacher: the study's finals of the same
seeds are its baseline. Test is reported once per model; the number of teachers is fixed before anything is
measured (no selection on test).

    .venv/bin/python bench/ensemble_teacher.py --work bench/_work/full --study under-100k-rung --seeds 0,1,2
    .venv/bin/python bench/ensemble_teacher.py --work bench/_work/full --study mlp-view --cached
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import ROOT, fmt, fmt_pt  # noqa: E402
from results import write_section  # noqa: E402
from tune_runs import with_view  # noqa: E402
from tune_verdict import t_test  # noqa: E402

from kdflow import steps  # noqa: E402
from kdflow.config import load_config  # noqa: E402
from kdflow.data import prepared as data  # noqa: E402
from kdflow.evaluation.metrics import predict_logits  # noqa: E402
from kdflow.steps.train import load_teacher  # noqa: E402


def train_teachers(work: Path, n: int) -> list[Path]:
    """The protocol's teacher (seed 0) and ``n - 1`` more trained on seeds 1.. with its recipe (resumable)."""
    base = ["tracking.enabled=false", f"storage.state_dir={work / 'state'}", "train.num_threads=2"]
    paths = [work / "teacher"]
    for seed in range(1, n):
        out = work / f"teacher-seed{seed}"
        if not (out / "metrics.json").is_file():
            cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", "full", [*base, f"train.seed={seed}"])
            t0 = time.time()
            steps.train(cfg, "teacher", work / "data", out)
            (out / "wall.json").write_text(json.dumps({"seconds": time.time() - t0}))
        paths.append(out)
    return paths


@torch.no_grad()
def _accuracies(paths: list[Path], prepared: data.PreparedData) -> dict[str, dict[str, float]]:
    """Validation and test accuracy of each teacher and of their ensemble (mean of probabilities)."""
    norm = prepared.normalizer()
    out: dict[str, dict[str, float]] = {}
    probs: dict[str, list[torch.Tensor]] = {"val": [], "test": []}
    for p in paths:
        model, _ = load_teacher(str(p / "model.pt"), prepared.num_classes, input_shape=prepared.input_shape)
        out[p.name] = {}
        for split in ("val", "test"):
            part = getattr(prepared, split)
            logits = predict_logits(model, part, norm)
            probs[split].append(logits.softmax(1))
            out[p.name][split] = float((logits.argmax(1) == part.y).float().mean())
    out["ensemble"] = {
        s: float((torch.stack(probs[s]).mean(0).argmax(1) == getattr(prepared, s).y).float().mean()) for s in probs
    }
    return out


def _distilled(study: Path, work: Path, teachers: list[Path], seed: int, a: argparse.Namespace) -> dict:
    epochs, cached = a.epochs, a.cached
    out = study / f"{a.finals}-ensemble-{len(teachers)}{'-cached' if cached else ''}" / f"distill-seed{seed}"
    if not (out / "metrics.json").is_file():
        extra = ", ".join(f"{{arch: resnet20, source: {(t / 'model.pt').resolve()}}}" for t in teachers[1:])
        sets = [
            "tracking.enabled=false",
            f"train.seed={seed}",
            f"storage.state_dir={work / 'state'}",
            "data.train_subset=null",
            f"student.epochs={epochs}",
            f"distill.cache={str(cached).lower()}",
            f"distill.extra_teachers=[{extra}]",
        ]
        if cached:  # a file per teacher, one view per epoch, beside the finals' single-teacher caches
            sets += [
                f"distill.cache_views={a.views or epochs}",
                f"distill.cache_dir={work / 'state' / 'teacher_cache'}",
            ]
        cfg = load_config(study / "best.yaml", None, sets)
        t0 = time.time()
        steps.distill(cfg, with_view(cfg, work / "data"), teachers[0] / "model.pt", out)
        (out / "wall.json").write_text(json.dumps({"seconds": time.time() - t0}))
    return {**json.loads((out / "metrics.json").read_text()), **json.loads((out / "wall.json").read_text())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="bench/_work/full")
    p.add_argument("--study", default="under-100k-rung", help="a bench/tune.py study under WORK/tune with finals")
    p.add_argument("--teachers", type=int, default=3, help="resnet20 teachers in the ensemble (the protocol's + more)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=15, help="the finals' length (the twin's finals must match)")
    p.add_argument(
        "--cached", action="store_true", help="the ensemble from the teacher cache (a file per teacher) instead of live"
    )
    p.add_argument("--views", type=int, default=0, help="with --cached: views cycled (0: one per epoch)")
    p.add_argument(
        "--finals", default="final", help="the study's folder of finals at --epochs (bench/tune.py: patient-45 for 45)"
    )
    a = p.parse_args()
    work, seeds = Path(a.work), [int(s) for s in a.seeds.split(",")]
    study = work / "tune" / a.study
    twins = {s: study / a.finals / f"scratch-seed{s}" / "metrics.json" for s in seeds}
    if not (study / "best.yaml").is_file() or not all(t.is_file() for t in twins.values()):
        raise SystemExit(f"error: --study: {study} has no best.yaml or finals on seeds {a.seeds}; fix: run it first")
    teachers = train_teachers(work, a.teachers)
    acc = _accuracies(teachers, data.load_prepared(work / "data"))
    runs = {s: _distilled(study, work, teachers, s, a) for s in seeds}
    kd = [runs[s]["test_accuracy"] for s in seeds]
    twin = [json.loads(twins[s].read_text())["test_accuracy"] for s in seeds]
    single = [
        json.loads((study / a.finals / f"distill-seed{s}" / "metrics.json").read_text())["test_accuracy"] for s in seeds
    ]
    gains = [k - t for k, t in zip(kd, twin, strict=True)]
    best = load_config(study / "best.yaml")
    # the twin's finals on validation (same length and data as the distilled finals; the study's own tune.json is
    # not carried for every study)
    twin_val = statistics.mean(json.loads(twins[s].read_text())["final_val_accuracy"] for s in seeds)
    how = f"cached, {runs[seeds[0]]['cache_views']} view(s) cycled" if a.cached else "online"
    body = [
        f"The pick of `{a.study}` (`{best.student.arch}`) distilled with its tuned recipe from an ensemble of "
        f"{a.teachers} resnet20 teachers (the protocol's and {a.teachers - 1} more trained with its recipe on seeds "
        f"1..{a.teachers - 1}; mean of probabilities, {how}), {a.epochs} epochs on the whole train split; its "
        "tuned scratch twin and the pick distilled from the protocol's teacher alone are the study's finals of the "
        "same seeds. Test once per model.",
        "",
        "| teacher | validation | test |",
        "|---|---|---|",
        *(f"| {n} | {100 * v['val']:.2f}% | {100 * v['test']:.2f}% |" for n, v in acc.items()),
        "",
        "| final model | test accuracy | seeds |",
        "|---|---|---|",
        f"| pick, distilled from the ensemble | {fmt(kd)} | {a.seeds} |",
        f"| pick, distilled from the protocol's teacher (the study's finals) | {fmt(single)} | {a.seeds} |",
        f"| its scratch twin (tuned) | {fmt(twin)} | {a.seeds} |",
        f"| KD gain from the ensemble (paired by seed) | {fmt_pt(gains)} | {a.seeds} |",
        "",
        f"Lead over the tuned twin on validation ({100 * twin_val:.2f}%, its finals' mean): the protocol's teacher "
        f"{100 * (acc['teacher']['val'] - twin_val):+.2f} pt, the ensemble {100 * (acc['ensemble']['val'] - twin_val):+.2f} pt. "
        f"KD gain from the ensemble {100 * statistics.mean(gains):+.2f} pt: {t_test(gains)[0]}; "
        f"{statistics.mean(runs[s]['seconds'] for s in seeds) / 60:.0f} min per seed to distil.",
    ]
    title = f"Ensemble teacher: {a.study}" + (f", {a.epochs} epochs" if a.finals != "final" else "")
    write_section(title, "\n".join(body))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
