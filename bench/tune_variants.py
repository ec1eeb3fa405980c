"""A finished study's pick with one recipe change at a time at the final length, chosen on validation.

The search tunes temperature, alpha and the rest at ``--search-epochs`` on a subset, and its final rung only
re-ranks its best trials: no recipe is ever compared at the final length on the whole split. This trains the pick
with each ``--variant`` (``LABEL=key=value[,key=value...]``, e.g. ``dkd=distill.method=dkd``) at the final length
on ``--search-seed``, compares each with the pick's own final of that seed on *validation*, and trains the best on
the other ``--seeds``; its KD gain is paired by seed with the study's finals (the same scratch twin). Test is
reported once per model and chooses nothing. The study (``--work``/tune/``--name``) must have run its finals.

    .venv/bin/python bench/tune_variants.py --name under-100k-rung --variant "T 4=distill.temperature=4" \\
        --variant "alpha 0.3=distill.alpha=0.3" --variant "dkd=distill.method=dkd"
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import fmt, fmt_pt  # noqa: E402
from results import write_section  # noqa: E402
from tune import final_config, final_data  # noqa: E402
from tune_runs import trained  # noqa: E402

from kdflow import steps  # noqa: E402

RECIPE = "the pick's tuned recipe (the study's finals)"


def parse_variant(text: str) -> tuple[str, list[str]]:
    label, sep, sets = text.partition("=")
    if not sep or "=" not in sets:
        raise SystemExit(f"error: --variant '{text}': write LABEL=key=value[,key=value]; e.g. dkd=distill.method=dkd")
    return label.strip(), [x.strip() for x in sets.split(",")]


def slug(label: str) -> str:
    """A folder name for a label: letters, digits and dashes (0.5 -> 0p5)."""
    return "-".join("".join(c if c.isalnum() else " " for c in label.replace(".", "p")).split())


def run_variant(a, study: Path, sets: list[str], label: str, seed: int) -> dict:
    best = study / "best.yaml"
    cfg = final_config(best, Path(a.work), a, seed, sets)
    data_dir = final_data(cfg, best, Path(a.work), a)
    out = study / "variants" / slug(label) / f"distill-seed{seed}"
    m = trained(out, lambda d: steps.distill(cfg, data_dir, Path(a.work) / "teacher" / "model.pt", d))
    print(f"{label} seed {seed}: val {m['final_val_accuracy']:.4f} test {m['test_accuracy']:.4f}", flush=True)
    return m


def finals(study: Path, seeds: list[int]) -> dict[int, dict[str, dict]]:
    """The study's finals (distilled with its recipe, and the twin) of the seeds that have both."""
    found = {}
    for s in seeds:
        pair = {k: trained(study / "final" / f"{k}-seed{s}", None) for k in ("distill", "scratch")}
        found[s] = pair
    return found


def report(a, runs: dict[str, dict[int, dict]], final: dict[int, dict[str, dict]], chosen: str | None) -> str:
    seed0, seeds = a.search_seed, [int(s) for s in a.seeds.split(",")]
    lines = [
        f"The pick of `{a.name}` with one recipe change at a time, {a.final_epochs} epochs on the whole train split "
        f"({a.final_views or a.final_epochs} cached teacher views), chosen on validation (final weights) on seed "
        f"{seed0}; the chosen one then on seeds {a.seeds}. KD gain paired by seed against the study's scratch twin "
        "(its finals). Test reported once per model, never read to choose.",
        "",
        f"| recipe | val accuracy, seed {seed0} | test accuracy | KD gain over the twin (paired) | seeds |",
        "|---|---|---|---|---|",
    ]
    for label, by_seed in runs.items():
        have = sorted(by_seed)
        if not have:
            lines.append(f"| {label} | - | - | - | (to run) |")
            continue
        val = by_seed[seed0]["final_val_accuracy"] if seed0 in by_seed else float("nan")
        test = [by_seed[s]["test_accuracy"] for s in have]
        gains = [by_seed[s]["test_accuracy"] - final[s]["scratch"]["test_accuracy"] for s in have]
        mark = " (chosen)" if label == chosen else ""
        lines.append(
            f"| {label}{mark} | {100 * val:.2f}% | {fmt(test)} | {fmt_pt(gains)} | {','.join(map(str, have))} |"
        )
    if chosen is None:
        return "\n".join([*lines, "", f"(partial: variants still to run on seed {seed0})"])
    lines.append("")
    if chosen == RECIPE:
        return "\n".join([*lines, "No change beats the tuned recipe on validation at the final length."])
    have = sorted(runs[chosen])
    gains = [runs[chosen][s]["test_accuracy"] - final[s]["scratch"]["test_accuracy"] for s in have]
    over = [runs[chosen][s]["test_accuracy"] - final[s]["distill"]["test_accuracy"] for s in have]
    acc = statistics.mean(runs[chosen][s]["test_accuracy"] for s in have)
    pending = [s for s in seeds if s not in have]
    target = ""
    if a.target_gain:
        met = "met" if statistics.mean(gains) >= a.target_gain / 100 else "MISSED"
        target = f" (target >= +{a.target_gain:g} pt: {met})"
    text = (
        f"Chosen on validation: {chosen}. KD gain {fmt_pt(gains)} over the twin{target}, {100 * acc:.2f}% test; "
        f"{fmt_pt(over)} over the tuned recipe, paired by seed"
        + (f" (partial: seed(s) {','.join(map(str, pending))} still to run)" if pending else "")
        + "."
    )
    return "\n".join([*lines, text])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="bench/_work/full")
    p.add_argument("--name", required=True, help="the study under WORK/tune/")
    p.add_argument("--variant", action="append", default=[], help="LABEL=key=value[,key=value] (repeat)")
    p.add_argument("--search-seed", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2", help="the study's final seeds")
    p.add_argument("--final-epochs", type=int, default=15)
    p.add_argument("--final-views", type=int, default=15)
    p.add_argument("--no-augment", action="store_true", help="as the study was run (its split without crop or flip)")
    p.add_argument("--target-gain", type=float, default=0.0, help="the issue's target KD gain (pt), reported")
    p.add_argument("--report", action="store_true", help="write the section from finished runs; train nothing")
    a = p.parse_args()
    a.profile, a.final_as_searched = None, False  # tune.py's final-run switches: the protocol's length and split
    study = Path(a.work) / "tune" / a.name
    seeds = [int(s) for s in a.seeds.split(",")]
    if not all(
        (study / "final" / f"{k}-seed{s}" / "metrics.json").is_file() for s in seeds for k in ("distill", "scratch")
    ):
        raise SystemExit(
            f"error: --name: {study} has not finished its finals on seeds {a.seeds}; fix: run bench/tune.py first"
        )
    variants = dict(parse_variant(v) for v in a.variant)
    if not variants:
        raise SystemExit("error: --variant: none given; fix: e.g. --variant dkd=distill.method=dkd")
    final = finals(study, seeds)
    runs: dict[str, dict[int, dict]] = {RECIPE: {s: final[s]["distill"] for s in seeds}}
    section = f"Recipe at the final length: {a.name}"
    for label, sets in variants.items():
        runs[label] = {}
        done = (study / "variants" / slug(label) / f"distill-seed{a.search_seed}" / "metrics.json").is_file()
        if not a.report or done:
            runs[label][a.search_seed] = run_variant(a, study, sets, label, a.search_seed)
        write_section(section, report(a, runs, final, None))
    if any(a.search_seed not in r for r in runs.values()):
        print(report(a, runs, final, None))
        return 0
    chosen = max(runs, key=lambda k: runs[k][a.search_seed]["final_val_accuracy"])
    for s in seeds if chosen != RECIPE else []:
        done = (study / "variants" / slug(chosen) / f"distill-seed{s}" / "metrics.json").is_file()
        if s not in runs[chosen] and (not a.report or done):
            runs[chosen][s] = run_variant(a, study, variants[chosen], chosen, s)
            write_section(section, report(a, runs, final, chosen))
    body = report(a, runs, final, chosen)
    write_section(section, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
