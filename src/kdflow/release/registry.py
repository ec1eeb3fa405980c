"""Registry promotion with aliases (no stages): challenger -> champion only when it wins beyond noise.

The decision is made on the release split (:mod:`kdflow.data.release_split`: held out of every data
window by content hash, never trained on, never selected on, never the split results are reported on), so
a champion trained on one window and a challenger trained on the next are judged on images neither saw and
neither was picked on. Challenger and champion are evaluated there with the same
code, on the same examples, and the challenger wins only when (a) its accuracy exceeds the champion's
by at least ``gate.min_improvement`` and (b) McNemar's exact test on the examples the two disagree on
rejects "not better" at ``gate.promotion_alpha`` (one-sided). Test accuracy is recorded, never used.

Judging and moving the alias happen under a lease in the tracking database (:mod:`kdflow.lease`), so
concurrent promoters take turns and each judges against the champion of the moment.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

from kdflow.config import GateConfig
from kdflow.data.batches import Split
from kdflow.data.prepared import PreparedData
from kdflow.errors import GateError, TrackingError
from kdflow.evaluation.metrics import accuracy, predict_logits
from kdflow.evaluation.significance import mcnemar
from kdflow.release import lease

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
PROMOTION_SPLIT = "release"
FAULT_PAUSE = "KDFLOW_FAULT_PAUSE_BEFORE_ALIAS"  # fault-injection point of the fault suite (seconds to stall)


def _alias_version(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - MlflowException when the alias or model is absent
        return None


def registered_predictor(name: str, version: str, prepared: PreparedData) -> Callable[[Split], torch.Tensor]:
    """A registered version, downloaded and loaded once (without unpickling code), as ``split -> logits``.

    A kdflow pytorch model carries its weights-only ``model.pt`` (loaded with ``weights_only=True``);
    an ONNX model (``export.promote_format: onnx_int8``) runs in onnxruntime.
    """
    from kdflow.infra.checkpoints import load_model
    from kdflow.infra.model_uris import download_model
    from kdflow.release.export import logits_over, onnx_runner, onnx_session

    local = download_model(f"models:/{name}/{version}", "tracking.registered_model")
    checkpoints, onnx_files = sorted(local.rglob("model.pt")), sorted(local.rglob("*.onnx"))
    norm = prepared.normalizer()
    if checkpoints:
        model, _ = load_model(checkpoints[0], field=f"models:/{name}/{version}")
        return lambda split: predict_logits(model, split, norm)
    if onnx_files:
        run = onnx_runner(onnx_session(onnx_files[0]))
        return lambda split: logits_over(run, split, norm)
    raise TrackingError(
        f"models:/{name}/{version}",
        "holds neither a kdflow model.pt nor an ONNX file",
        "register models logged by kdflow steps",
    )


def accuracy_of_registered(name: str, version: str, prepared: PreparedData, split: str = "test") -> float:
    part = getattr(prepared, split)
    return accuracy(registered_predictor(name, version, prepared)(part), part.y)


def _rate(correct: torch.Tensor) -> float:
    return int(correct.sum()) / len(correct) if len(correct) else 0.0


def judge(challenger_correct: torch.Tensor, champion_correct: torch.Tensor, g: GateConfig) -> dict:
    """Better by the margin AND beyond noise; a tie or a one-image win is not a win."""
    acc_c, acc_k = _rate(challenger_correct), _rate(champion_correct)
    test = mcnemar(challenger_correct, champion_correct)
    wins = acc_c - acc_k >= g.min_improvement and acc_c > acc_k and test["p_value"] < g.promotion_alpha
    rule = (
        f"{PROMOTION_SPLIT} accuracy {acc_c:.4f} vs {acc_k:.4f} (margin {g.min_improvement}), "
        f"McNemar p={test['p_value']:.3g} (alpha {g.promotion_alpha})"
    )
    return {"wins": wins, "rule": rule, "champion_accuracy": acc_k, **test}


def promotion_split(prepared: PreparedData) -> Split:
    """The release split, refused (before anything is registered) when the dataset has none."""
    release = prepared.release
    if release is None or not len(release):
        raise GateError(
            "data.release_fraction",
            "the prepared --data has no release split to judge the promotion on (release_fraction 0, or prepared "
            "by hand or by an earlier kdflow)",
            "prepare the data again with `kdflow prep` and data.release_fraction > 0 (default 0.05)",
        )
    return release


def _registered_version(tracker, model_uri: str, name: str, run_id: str, tags: dict[str, str]):
    """Register once: a re-run of the same promotion finds its version instead of adding another."""
    client = tracker.client
    if _registered(client, name):
        for v in client.search_model_versions(f"name='{name}'"):
            if v.run_id == run_id and v.source == model_uri:
                return v
    return tracker.mlflow.register_model(model_uri, name, tags=tags)


def _stall_if_asked() -> None:
    pause = float(os.environ.get(FAULT_PAUSE, "0") or 0)
    if pause > 0:
        print("[promote] judged; stalling before the alias write (fault injection)", flush=True)
        sys.stdout.flush()
        time.sleep(pause)


def _move_champion(
    client, held: lease.Lease, name: str, version: str, champion, reason: str, run_id: str, forced: bool
) -> None:
    """The alias and tag writes of a promotion, each fenced by the lease: a lost lease stops them with one
    line naming what was already written."""
    writes: list[tuple[str, Callable[[], object]]] = []
    if champion is not None:
        writes.append(
            (
                f"{PREVIOUS} -> v{champion.version}",
                lambda: client.set_registered_model_alias(name, PREVIOUS, champion.version),
            )
        )
    writes.append((f"{CHAMPION} -> v{version}", lambda: client.set_registered_model_alias(name, CHAMPION, version)))
    tags = {"kdflow.promotion": reason, "kdflow.promoted_by_run": run_id}
    if forced:
        tags["kdflow.forced"] = "true: promoted with a failed or missing gate"
    for k, v in tags.items():
        writes.append((f"tag {k}", partial(client.set_model_version_tag, name, version, k, v)))
    done: list[str] = []
    for what, write in writes:
        try:
            held.fence()
        except lease.LeaseLost as e:
            raise TrackingError(
                "gate.promotion_lease_s",
                f"lost the promotion lease of '{name}' before writing {what} ({e}); written before it: "
                + (", ".join(done) or "nothing"),
                "promote again (it judges afresh against the champion then); raise gate.promotion_lease_s if "
                "judging takes longer",
            ) from None
        write()
        done.append(what)


def register_and_promote(
    tracker,
    model_uri: str,
    name: str,
    prepared: PreparedData,
    run_id: str,
    g: GateConfig,
    tags: dict[str, str],
    forced: bool = False,
) -> dict:
    split = promotion_split(prepared)
    client = tracker.client
    version = str(_registered_version(tracker, model_uri, name, run_id, tags).version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    challenger = registered_predictor(name, version, prepared)
    challenger_correct = challenger(split).argmax(1) == split.y
    test_accuracy = accuracy(challenger(prepared.test), prepared.test.y)  # reported, never decides
    client.set_model_version_tag(name, version, "kdflow.test_accuracy", f"{test_accuracy:.6f}")
    decision = {
        "name": name,
        "version": version,
        "split": PROMOTION_SPLIT,
        "forced": forced,
        "challenger_accuracy": _rate(challenger_correct),
        "challenger_test_accuracy": test_accuracy,
    }
    with lease.held(client, name, g.promotion_lease_s, g.promotion_lease_wait_s) as held:
        champion = _alias_version(client, name, CHAMPION)
        decision["champion_version"] = str(champion.version) if champion else None
        if champion is not None and str(champion.version) == version:
            return {**decision, "promoted": False, "reason": "already champion (idempotent re-run)"}
        reason = "first champion"
        if champion is not None:
            champion_correct = registered_predictor(name, champion.version, prepared)(split).argmax(1) == split.y
            verdict = judge(challenger_correct, champion_correct, g)
            decision.update({k: v for k, v in verdict.items() if k not in ("wins", "rule")})
            if not verdict["wins"]:
                reason = f"kept champion v{champion.version}: not better beyond noise ({verdict['rule']})"
                client.set_model_version_tag(name, version, "kdflow.promotion", reason)
                return {**decision, "promoted": False, "reason": reason}
            reason = f"beats champion v{champion.version}: {verdict['rule']}"
        _stall_if_asked()
        _move_champion(client, held, name, version, champion, reason, run_id, forced)
    return {**decision, "promoted": True, "reason": reason}


def _registered(client, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except Exception:  # noqa: BLE001
        return False
