"""The verdict lines of a bench/tune.py section: the tune's own (validation, what selection read) and the
finals' on test against the issue's targets, with whether the test gain is beyond seed noise.

Three seeds are few: a one-sided paired t-test over the seeds (distilled minus twin, each seed its own pair)
says whether the mean gain is more than seed-to-seed noise; a missed gain is followed by the tune's
diagnosis (whether the twin underfits, from its last-epoch training accuracy at the rung or search).
"""

from __future__ import annotations

import statistics

from kdflow.tune import report as tune_report


def t_test(gains: list[float]) -> tuple[str, str]:
    """The test's text and its reading: "ahead", "behind" (beyond seed noise either way) or "noise"."""
    if len(gains) < 2:
        return "one seed: no test against seed noise", "noise"
    if statistics.stdev(gains) == 0:
        return "no spread over seeds: no test against seed noise", "noise"
    from scipy.stats import ttest_1samp

    ahead = float(ttest_1samp(gains, 0.0, alternative="greater").pvalue)
    behind = float(ttest_1samp(gains, 0.0, alternative="less").pvalue)
    n = len(gains)
    if ahead < 0.05:
        return f"paired t-test over {n} seeds, distilled ahead: p={ahead:.2g}, beyond seed noise", "ahead"
    if behind < 0.05:
        return f"paired t-test over {n} seeds, the twin ahead: p={behind:.2g}, beyond seed noise", "behind"
    return f"paired t-test over {n} seeds, distilled ahead: p={ahead:.2g}, within seed noise", "noise"


def _target(value: float, target: float | None, unit: str) -> str:
    if target is None:
        return ""
    shown = f"{target:+.1f} pt" if unit == "pt" else f"{target:.1f}%"
    return f" (target >= {shown}: {'met' if value >= target else 'MISSED'})"


def verdict_lines(
    result, kd: list[float], twin: list[float], seeds: str, target_acc: float | None, target_gain: float | None
) -> list[str]:
    """Bullet lines for the section: the tune's verdict and why (validation), then the finals' on test."""
    tune_lines = [x for x in result.verdict[2:] if not x.startswith("train it for real")]
    lines = [
        f"- {'why' if x.startswith('why: ') else 'verdict of the tune (validation)'}: {x.removeprefix('why: ')}"
        for x in tune_lines
    ]
    if not kd:
        return lines
    gains = [k - t for k, t in zip(kd, twin, strict=True)]
    acc, gain = 100 * statistics.mean(kd), 100 * statistics.mean(gains)
    test, reading = t_test(gains)
    lines.append(
        f"- on test (finals, seeds {seeds}): distilled {acc:.2f}%{_target(acc, target_acc, '%')}; KD gain "
        f"{gain:+.2f} pt{_target(gain, target_gain, 'pt')}; {test}"
    )
    if reading == "ahead":  # distillation pays on test: a missed target is a size question, not a "why not"
        if target_gain is not None and gain < target_gain:
            lines.append(f"- the gain is real but {target_gain - gain:.2f} pt short of the target")
        return lines
    where = "rung" if result.summary.get("final_epochs") else "search"
    if not any(x.startswith("why") for x in tune_lines) and result.twin:
        if why := tune_report.why_it_did_not_pay(result.pick, result.twin, result.summary.get("teacher_val_accuracy")):
            lines.append(f"- why (the twin at the tune's {where}): {why.removeprefix('why: ')}")
    return lines
