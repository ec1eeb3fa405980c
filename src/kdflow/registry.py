"""Registry promotion with aliases (no stages): challenger -> champion only when it beats the champion.

The champion is re-evaluated on the same frozen test split with the same evaluation code, so a model
registered on other data is judged fairly. Re-running a promotion is a no-op; a race is narrowed by
re-reading the champion after the decision and re-judging when it moved.
"""

from __future__ import annotations

from kdflow.data import PreparedData
from kdflow.errors import TrackingError
from kdflow.evaluate import accuracy, predict_logits

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"


def _alias_version(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - MlflowException when the alias or model is absent
        return None


def accuracy_of_registered(name: str, version: str, prepared: PreparedData) -> float:
    """Test accuracy of a registered version, loaded without unpickling code.

    A kdflow pytorch model carries its weights-only ``model.pt`` (loaded with ``weights_only=True``);
    an ONNX model (``export.promote_format: onnx_int8``) runs in onnxruntime.
    """
    from kdflow.checkpoints import load_model
    from kdflow.export import logits_over, onnx_runner, onnx_session
    from kdflow.tracking import download_model

    local = download_model(f"models:/{name}/{version}", "tracking.registered_model")
    norm = prepared.normalizer()
    checkpoints = sorted(local.rglob("model.pt"))
    onnx_files = sorted(local.rglob("*.onnx"))
    if checkpoints:
        model, _ = load_model(checkpoints[0], field=f"models:/{name}/{version}")
        logits = predict_logits(model, prepared.test, norm)
    elif onnx_files:
        logits = logits_over(onnx_runner(onnx_session(onnx_files[0])), prepared.test, norm)
    else:
        raise TrackingError(
            f"models:/{name}/{version}",
            "holds neither a kdflow model.pt nor an ONNX file",
            "register models logged by kdflow steps",
        )
    return accuracy(logits, prepared.test.y)


def register_and_promote(
    tracker,
    model_uri: str,
    name: str,
    prepared: PreparedData,
    run_id: str,
    min_improvement: float,
    tags: dict[str, str],
    max_rounds: int = 3,
) -> dict:
    client = tracker.client
    existing = (
        [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id and v.source == model_uri]
        if _registered(client, name)
        else []
    )
    if existing:
        version = existing[0]
    else:
        version = tracker.mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    challenger_acc = accuracy_of_registered(name, version.version, prepared)
    decision = {"name": name, "version": str(version.version), "challenger_accuracy": challenger_acc}
    for _ in range(max_rounds):
        champ = _alias_version(client, name, CHAMPION)
        if champ is not None and str(champ.version) == str(version.version):
            decision.update(
                promoted=False, reason="already champion (idempotent re-run)", champion_version=str(champ.version)
            )
            return decision
        champ_acc = accuracy_of_registered(name, champ.version, prepared) if champ else None
        decision["champion_accuracy"] = champ_acc
        decision["champion_version"] = str(champ.version) if champ else None
        if champ is not None and champ_acc is not None and challenger_acc < champ_acc + min_improvement:
            decision.update(
                promoted=False,
                reason=f"challenger {challenger_acc:.4f} < champion {champ_acc:.4f} + margin {min_improvement}",
            )
            client.set_model_version_tag(name, version.version, "kdflow.promotion", decision["reason"])
            return decision
        still = _alias_version(client, name, CHAMPION)
        if (still.version if still else None) != (champ.version if champ else None):
            continue  # someone promoted meanwhile: judge again against the new champion
        if champ is not None:
            client.set_registered_model_alias(name, PREVIOUS, champ.version)
        client.set_registered_model_alias(name, CHAMPION, version.version)
        reason = (
            "first champion"
            if champ is None
            else f"beats champion v{champ.version}: {challenger_acc:.4f} vs {champ_acc:.4f}"
        )
        for k, v in {
            "kdflow.promotion": reason,
            "kdflow.promoted_by_run": run_id,
            "kdflow.test_accuracy": f"{challenger_acc:.6f}",
        }.items():
            client.set_model_version_tag(name, version.version, k, v)
        decision.update(promoted=True, reason=reason)
        return decision
    decision.update(promoted=False, reason="champion kept moving; gave up after re-judging")
    return decision


def _registered(client, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except Exception:  # noqa: BLE001
        return False
