"""The tune's verdict: does the pick beat its tuned scratch twin on validation, beyond noise?

A validation gain of a tenth of a point is a handful of images. The pick and its twin are judged on the same
validation images, and each trial keeps which of them it got right (``val_correct``), so the exact one-sided
McNemar test on the images the two disagree on says whether the gain is more than chance: distillation pays
only when it is (p below ``tune.verdict_alpha``). Without those records (a study recorded before they were
kept, or a validation set too large to carry them) the verdict reads the gain alone, and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdflow.evaluation.significance import mcnemar, unpack_correct
from kdflow.tune import report

if TYPE_CHECKING:
    from kdflow.tune.run import TuneResult


def paired(pick_attrs: dict[str, Any], twin_attrs: dict[str, Any]) -> dict[str, Any] | None:
    """McNemar of the pick against its twin on the validation images, or None without both records."""
    if "val_correct" not in pick_attrs or "val_correct" not in twin_attrs:
        return None
    kd, twin = unpack_correct(pick_attrs["val_correct"]), unpack_correct(twin_attrs["val_correct"])
    if len(kd) != len(twin):  # not the same validation split: no pairing
        return None
    test = mcnemar(kd, twin)
    return {
        "images": len(kd),
        "distilled_only_correct": test["challenger_only_correct"],
        "twin_only_correct": test["champion_only_correct"],
        "p_value": test["p_value"],
    }


def pays(kd_gain_val: float | None, summary: dict[str, Any]) -> bool:
    if kd_gain_val is None or kd_gain_val <= 0:
        return False
    test = summary.get("kd_gain_val_mcnemar")
    return test is None or test["p_value"] < summary.get("verdict_alpha", 0.05)


def _evidence(summary: dict[str, Any]) -> str:
    test = summary.get("kd_gain_val_mcnemar")
    if test is None:
        return (
            "not tested against chance: the trials have no per-image validation records (recorded before they "
            "were kept, or over 65,536 validation images)"
        )
    return (
        f"{test['distilled_only_correct']:,} of {test['images']:,} validation images only the distilled student "
        f"gets right, {test['twin_only_correct']:,} only the twin: McNemar p={test['p_value']:.2g}, "
        f"tune.verdict_alpha {summary.get('verdict_alpha', 0.05)}"
    )


def verdict_lines(result: TuneResult) -> list[str]:
    p, t = result.pick, result.twin
    rung = result.summary.get("final_epochs")
    where = f" at the final rung ({rung} epochs, final.csv)" if rung else ""
    lines = [
        f"pick: {p['arch']} ({p['params']:,} params), trial {p['trial']}: val accuracy {100 * p['val_accuracy']:.2f}% "
        f"distilled{where}"
    ]
    gain = result.kd_gain_val
    if t is None or gain is None:
        lines.append("no scratch twin trained: the KD gain is unknown")
    else:
        lines.append(
            f"scratch twin ({t['arch']}, tuned over the same shared knobs, {result.summary['scratch_trials']} trials): "
            f"val accuracy {100 * t['val_accuracy']:.2f}%; KD gain {100 * gain:+.2f} pt on validation"
        )
        if result.pays:
            lines.append(f"distillation pays for this budget: use the distilled student ({_evidence(result.summary)})")
        elif gain > 0:
            lines.append(
                f"distillation did not pay beyond noise for this budget: {100 * gain:+.2f} pt is within chance "
                f"({_evidence(result.summary)}): use the scratch model (no teacher to run), or judge on more "
                "validation images"
            )
        else:
            lines.append("distillation did not pay for this budget: use the scratch model")
        if not result.pays and (why := report.why_it_did_not_pay(p, t, result.summary.get("teacher_val_accuracy"))):
            lines.append(why)
    lines.append(f"train it for real: kdflow distill --config {result.best_yaml} --out OUT")
    return lines
