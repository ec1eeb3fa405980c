"""bench/tune.py's long runs beside a study: a model trained once and reused, and the pick distilled data-free."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from protocol import fmt
from results import write_section

from kdflow import steps
from kdflow.config import load_config
from kdflow.data import prepared as data
from kdflow.data.prepared import augmentation_spec


def trained(d: Path, train) -> dict:
    """The metrics of the model in ``d`` with the wall it took, trained by ``train(d)`` first unless done. A run
    resumed from its checkpoint timed only its last stretch: its epochs' own seconds (history.json, every epoch
    since the start) count when they are more."""
    if not (d / "metrics.json").is_file():
        t0 = time.time()
        train(d)
        (d / "wall.json").write_text(json.dumps({"seconds": time.time() - t0}))
    wall = json.loads((d / "wall.json").read_text())["seconds"]
    history = json.loads((d / "history.json").read_text()) if (d / "history.json").is_file() else []
    epochs = sum(h.get("seconds", 0.0) for h in history)
    return {**json.loads((d / "metrics.json").read_text()), "seconds": max(wall, epochs)}


def with_view(cfg, data_dir: Path) -> Path:
    """``data_dir``, or the same samples prepared with the config's train view when they were prepared with another
    (once, beside them, e.g. data-augment-false): the distill step trains on the view its data was prepared with
    (the twin applies its own, scratch_twin.augment)."""
    if data.load_manifest(data_dir)["augmentation"] == augmentation_spec(cfg.data):
        return data_dir
    viewed = data_dir.parent / f"{data_dir.name}-augment-{str(cfg.data.augment).lower()}"
    if not (viewed / "manifest.json").is_file():
        steps.prep(load_config(data_dir / "config.resolved.yaml", None, [f"data.augment={cfg.data.augment}"]), viewed)
    if data.load_manifest(viewed)["digest"] != data.load_manifest(data_dir)["digest"]:
        raise SystemExit(f"error: {viewed}: not the samples of {data_dir}; fix: remove it and run again")
    return viewed


def data_free(a, result, work: Path, out: Path, finals: dict[int, dict]) -> None:
    """The pick distilled data-free (DFAD with the teacher's BN statistics and class balance) from the study's
    teacher on ``--dfad-seeds``: no training image read; beside the pick distilled with the data. The section is
    written after each seed (the pending ones named), as the finals' is."""
    seeds = [int(s) for s in a.dfad_seeds.split(",")]
    runs: dict[int, dict] = {}
    variant = f"-confidence{a.dfad_confidence:g}" if a.dfad_confidence else ""  # the recipe's runs keep their own
    variant += f"-ema{a.dfad_ema:g}" if a.dfad_ema else ""
    for seed in seeds:
        sets = ["tracking.enabled=false", f"train.seed={seed}", f"storage.state_dir={work / 'state'}"]
        sets += ["distill.method=dfad", "distill.data_free=true", "distill.cache=false", "distill.extra_teachers=[]"]
        sets += [f"distill.generator.confidence_weight={a.dfad_confidence}"] if a.dfad_confidence else []
        sets += [f"distill.generator.student_ema={a.dfad_ema}"] if a.dfad_ema else []
        cfg = load_config(result.best_yaml, None, sets)
        distil = lambda d: steps.distill(cfg, work / "data", work / "teacher" / "model.pt", d)  # noqa: B023, E731
        runs[seed] = trained(out / f"dfad{variant}-seed{seed}", distil)
        print(f"data-free seed {seed}: test {runs[seed]['test_accuracy']:.4f}", flush=True)
        _data_free_section(a, result, cfg, runs, [s for s in seeds if s not in runs], finals)


def _data_free_section(a, result, cfg, runs: dict[int, dict], pending: list[int], finals: dict[int, dict]) -> None:
    done = list(runs)
    acc = [runs[s]["test_accuracy"] for s in done]
    with_data = [finals[s]["distill"]["test_accuracy"] for s in done if s in finals]
    g = cfg.distill.generator
    body = [
        f"The pick of `{a.name}` (`{result.pick['arch']}`, {result.pick['params']:,} params) distilled data-free from "
        f"the protocol's resnet20 teacher (DFAD, generator width {g.width}, {g.iterations} generator steps of "
        f"{g.batch} images, {g.student_steps} student steps each, BN-statistics weight {g.bn_weight}, class-balance "
        f"weight {g.balance_weight}, confidence weight {g.confidence_weight}, student weight average "
        f"{g.student_ema or 'off'}); no training image read; test accuracy once per model.",
        "",
        "| model | test accuracy | wall per seed (min) | seeds |",
        "|---|---|---|---|",
        f"| pick, data-free (DFAD) | {fmt(acc)} | {statistics.mean(runs[s]['seconds'] for s in done) / 60:.0f} | "
        f"{','.join(map(str, done))} |",
    ]
    if with_data:
        body.append(
            f"| pick, distilled with the train split ({a.final_epochs} epochs) | {fmt(with_data)} | - | "
            f"{','.join(str(s) for s in done if s in finals)} |"
        )
    if pending:
        body.append(f"| (partial: seed(s) {','.join(map(str, pending))} still to run) | - | - | - |")
    body += ["", f"Target >= 85% test (mean): {'met' if statistics.mean(acc) >= 0.85 else 'MISSED'}."]
    title = (
        f"Data-free distillation: {a.name}"
        + (f", confidence {g.confidence_weight:g}" if g.confidence_weight else "")
        + (f", student EMA {g.student_ema:g}" if g.student_ema else "")
    )
    write_section(title, "\n".join(body))
    print("\n".join(body))
