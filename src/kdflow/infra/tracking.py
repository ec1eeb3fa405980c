"""MLflow tracking: a parent run per pipeline run, a child run per step, LoggedModels with lineage.

Default backend: ``sqlite:///<state_dir>/mlflow.db`` with local artifacts (the file store is refused by
MLflow 3). ``$MLFLOW_TRACKING_URI`` or ``tracking.uri`` point it elsewhere (an ``mlflow server``).
When KFP's MLflow integration injects ``MLFLOW_RUN_ID``, a step logs into that run instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdflow.config import Config, flatten
from kdflow.errors import TrackingError
from kdflow.infra.mlflow_store import seed_sqlite_store
from kdflow.infra.runtime import runtime_tags

PIPELINE_TAG = "kdflow.pipeline_run_id"
STEP_TAG = "kdflow.step"


# MLflow 3 opens an experiment without this tag in its GenAI view; kdflow's runs are model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# History columns that never change within a run: logged once as params, not as per-epoch metrics.
CONSTANT_COLUMNS = ("global_batch", "world_size")


def tracking_uri(cfg: Config) -> str:
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    state = Path(cfg.storage.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{state / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///") or uri.startswith("databricks") or "://" not in uri:
            return
        raise TrackingError(
            "tracking.uri",
            f"unsupported tracking URI '{uri}'",
            "use sqlite:///path/mlflow.db or http://host:port of an mlflow server",
        )
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError("tracking.uri", f"'{uri}' answered HTTP {resp.status}", "check the MLflow server")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            "tracking.uri",
            f"MLflow server '{uri}' is unreachable ({reason})",
            "start it (make stack) or unset MLFLOW_TRACKING_URI to use the local sqlite store",
        ) from None


def local_artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store live beside the database, not in ./mlruns of whatever the cwd is.

    Servers (http://) choose their own artifact root (e.g. proxied to S3), so None there.
    """
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    return (db.parent / "mlartifacts" / experiment).resolve().as_uri()


def git_sha() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


class Tracker:
    """Thin wrapper over MlflowClient; every kdflow step talks to MLflow through it."""

    def __init__(self, cfg: Config):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.uri = tracking_uri(cfg)
        check_reachable(self.uri)
        seed_sqlite_store(self.uri)  # a new local store skips MLflow's migrations
        mlflow.set_tracking_uri(self.uri)
        self.mlflow = mlflow
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(cfg.tracking.experiment)
        self.experiment_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                cfg.tracking.experiment,
                artifact_location=local_artifact_location(self.uri, cfg.tracking.experiment),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        )
        if exp is not None and exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    # ------------------------------------------------------------------ runs
    def find_parent_run(self, pipeline_run_id: str):
        """The parent run of one pipeline run, or None."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run_id}' and tags.`{STEP_TAG}` = 'pipeline'",
            max_results=1,
        )
        return found[0] if found else None

    def parent_run(self, pipeline_run_id: str, tags: dict[str, str]) -> str:
        """Get or create the parent run of one pipeline run (idempotent by tag)."""
        found = self.find_parent_run(pipeline_run_id)
        if found:
            return found.info.run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"pipeline-{pipeline_run_id[:40]}",
            tags={PIPELINE_TAG: pipeline_run_id, STEP_TAG: "pipeline", **tags},
        )
        return run.info.run_id

    @contextmanager
    def step_run(self, step: str, parent_run_id: str | None, pipeline_run_id: str, tags: dict[str, str] | None = None):
        """A child run for one step, or the run KFP injected through MLFLOW_RUN_ID."""
        injected = os.environ.get("MLFLOW_RUN_ID")
        all_tags = {STEP_TAG: step, PIPELINE_TAG: pipeline_run_id, **runtime_tags(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if injected:
            run_id = injected
            for k, v in all_tags.items():
                self.client.set_tag(run_id, k, v)
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=step, tags=all_tags).info.run_id
        try:
            with self.mlflow.start_run(run_id=run_id):
                yield run_id
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise

    # ------------------------------------------------------------------ logging
    def log_config(self, run_id: str, cfg: Config, budget: frozenset[str] = frozenset()) -> None:
        """The resolved config as params. Fields in ``budget`` (and then the config hash, which they move)
        are tags instead: params are immutable, and a run that continues with a larger budget re-logs them."""
        params = flatten(cfg.to_dict())
        params["distill.hard_weight"] = cfg.distill.hard_weight
        params["distill.soft_weight"] = cfg.distill.soft_weight
        params["config_hash"] = cfg.digest()
        if budget:
            moving = {k: params.pop(k) for k in [*budget, "config_hash"] if k in params}
            for k, v in moving.items():
                self.client.set_tag(
                    run_id, f"kdflow.budget.{k}" if k != "config_hash" else "kdflow.config_hash", str(v)
                )
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])
        self.client.log_text(run_id, cfg.to_yaml(), "config.resolved.yaml")

    def log_history(self, run_id: str, history: list[dict], prefix: str = "") -> None:
        """Per-epoch metrics with step=epoch (the step logs the whole history.csv once it has finished)."""
        from mlflow.entities import Metric

        metrics = []
        for row in history:
            for k, v in row.items():
                if k not in ("epoch", *CONSTANT_COLUMNS) and isinstance(v, int | float):
                    metrics.append(Metric(f"{prefix}{k}", float(v), 0, int(row["epoch"])))
        for i in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[i : i + 500])
        constants = {k: history[0][k] for k in CONSTANT_COLUMNS if history and k in history[0]}
        self._log_params_once(run_id, constants)

    def _log_params_once(self, run_id: str, params: dict[str, Any]) -> None:
        """Params are immutable in MLflow: log only those the run does not have yet."""
        if not params:
            return
        have = self.client.get_run(run_id).data.params
        new = {k: str(v) for k, v in params.items() if k not in have}
        if new:
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], prefix: str = "") -> None:
        from mlflow.entities import Metric

        flat = {
            f"{prefix}{k}": float(v)
            for k, v in flatten(metrics).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        items = [Metric(k, v, 0, 0) for k, v in flat.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dataset(self, manifest: dict, source_uri: str, context: str) -> None:
        """Record the prepared split as an MLflow dataset input of the active run."""
        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas

        counts = manifest["counts"]
        df = pd.DataFrame(
            [
                {
                    "split": context,
                    "count": float(counts.get(context, 0)),
                    "digest": manifest["digest"],
                    "dataset": manifest["dataset"],
                    "window": manifest.get("window", ""),
                    "source": source_uri,
                }
            ]
        )
        # "debian:/usr/share/...", "torchvision:...", "<packaged dataset>:/..." carry a local path after the label
        labelled = source_uri.startswith(("debian:", "torchvision:")) or re.match(r"[a-z][a-z0-9-]*:/(?!/)", source_uri)
        location = source_uri.split(":", 1)[1] if labelled else source_uri
        with (
            warnings.catch_warnings()
        ):  # a local path matches two equivalent MLflow source types: not the user's concern
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            ds = from_pandas(
                df, source=location, name=f"{manifest['dataset']}-{context}", digest=manifest["digest"][:32]
            )
        self.mlflow.log_input(ds, context=context)

    def log_torch_model(
        self, model, name: str, input_example, tags: dict[str, str], checkpoint: Path | None = None
    ) -> str:
        """Log a LoggedModel (pytorch flavor, pickle serialization, signature from the example).

        kdflow's own weights-only checkpoint rides along as an extra file, so a ``models:/`` teacher is
        loaded with ``weights_only=True`` instead of unpickling the flavor's model.
        """
        import mlflow.pytorch
        from mlflow.models import infer_signature

        model.eval()
        import torch

        with torch.no_grad():
            out = model(torch.from_numpy(input_example)).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            input_example=input_example,
            signature=infer_signature(input_example, out),
            serialization_format="pickle",
            pip_requirements=pip_requirements(),
            extra_files=[str(checkpoint)] if checkpoint else None,
            tags=tags,
        )
        return info.model_id

    def log_onnx_model(self, path: Path, name: str, input_example, tags: dict[str, str]) -> str:
        import mlflow.onnx
        import onnx

        manifest = path.with_name(path.name + ".manifest.json")  # predict reads preprocessing from it
        info = mlflow.onnx.log_model(
            onnx.load(str(path)),
            name=name,
            input_example=input_example,
            pip_requirements=["onnxruntime", "onnx", "numpy"],
            tags=tags,
            extra_files=[str(manifest)] if manifest.is_file() else None,
        )
        return info.model_id

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def pip_requirements() -> list[str]:
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
