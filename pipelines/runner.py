"""Compile, run locally, submit and schedule. Wiring only: the ML lives in kdflow."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from kdflow.config import load_config
from kdflow.errors import ConfigError
from pipelines.distillation import DEFAULT_CONFIG, PIPELINE_NAME, build_pipeline
from pipelines.kfp_build import cheap_self_naming


def compile_pipeline(out: str | Path, use_gpu: bool = False, which: str = "distillation", **shape) -> Path:
    """Compile ``which`` (distillation, or autodistill with ``rounds``/``parallel``) to ``out``."""
    from kfp import compiler

    from pipelines.autodistill import build_autodistill

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.yaml")
    pipeline = build_pipeline(use_gpu=use_gpu) if which == "distillation" else build_autodistill(use_gpu, **shape)
    compiler.Compiler().compile(pipeline, str(tmp))
    tmp.replace(out)
    return out


def _validate(profile: str, overrides: list[str], config: Path = DEFAULT_CONFIG, **knobs):
    """Resolve the config and check the tracking URI here, before any step runs."""
    from kdflow.config import knob_overrides
    from kdflow.infra.tracking import check_reachable, tracking_uri

    cfg = load_config(config, profile, knob_overrides(**knobs) + overrides)
    if cfg.tracking.enabled:
        check_reachable(tracking_uri(cfg))
    return cfg


def run_local(
    profile: str = "default",
    root: str = "local_outputs",
    overrides: list[str] | None = None,
    data_window: str = "",
    teacher_source: str = "",
    which: str = "distillation",
    runner: str = "subprocess",
    warm: bool = True,
    config: str | None = None,
    **shape,
) -> dict:
    """The whole DAG on this machine: each step a subprocess (forked from a warm worker unless ``warm`` is
    False or KDFLOW_WARM=0), or a container of the component image. ``config``: an experiment YAML embedded in
    the run instead of configs/fashion_mnist.yaml (e.g. configs/multiview_digits.yaml)."""
    from kfp import local

    overrides = overrides or []
    config_path = Path(config) if config else DEFAULT_CONFIG
    cfg = _validate(profile, overrides, config_path, data_window=data_window, teacher_source=teacher_source)
    if which == "autodistill":  # before any step runs
        from kdflow.tune.rounds import check_cluster_form

        shape.setdefault("final_top_k", cfg.tune.final.top_k)  # the DAG's final rung is the config's
        check_cluster_form(cfg, final_top_k=shape["final_top_k"])
    if config:
        shape["config_yaml"] = json.dumps(yaml.safe_load(config_path.read_text()), sort_keys=True)
    state = Path(".kdflow").resolve()
    state.mkdir(exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'mlflow.db'}")
    root_path = Path(root).resolve()
    with contextlib.ExitStack() as engine:
        if runner == "container":
            local_runner = _container_runner(engine, state, root_path, cfg)
        elif runner == "subprocess":
            if warm:
                from pipelines.warm import warm_worker

                engine.enter_context(warm_worker(keep=True))  # the next run in this process reuses it
            # the steps' scratch (kfp's mktemp -d per task with its ephemeral_component.py, the temp folders of
            # mlflow and the steps) goes under one folder removed when the run ends, not left in /tmp; set after
            # the worker starts, which outlives this run (tasks bring their own environment)
            scratch = engine.enter_context(tempfile.TemporaryDirectory(prefix="kdflow-run-"))
            engine.enter_context(_env("TMPDIR", scratch))
            local_runner = local.SubprocessRunner(use_venv=False)
        else:
            raise ConfigError("--runner", f"'{runner}' is not a runner", "use subprocess or container")
        return _run_dag(local_runner, root_path, which, cfg, profile, overrides, data_window, teacher_source, shape)


def _container_runner(engine: contextlib.ExitStack, state: Path, root_path: Path, cfg):
    """podman's Docker-API service for the run's lifetime, and a DockerRunner for the component image."""
    from components.image import KDFLOW_IMAGE
    from kdflow.infra.tracking import tracking_uri
    from pipelines import engine as containers

    docker_host = engine.enter_context(containers.podman_service(state / "podman"))
    engine.enter_context(_env("DOCKER_HOST", docker_host))  # kfp's DockerRunner reads docker.from_env()
    containers.check_image(docker_host, KDFLOW_IMAGE)
    uri = tracking_uri(cfg) if cfg.tracking.enabled else ""
    containers.grant_writes(state, root_path, uri)
    writable = containers.writable_dirs(state, uri)
    return containers.docker_runner(state, writable, containers.read_only_inputs(cfg))


@contextlib.contextmanager
def _env(name: str, value: str):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _run_dag(
    local_runner, root_path: Path, which: str, cfg, profile, overrides, data_window, teacher_source, shape
) -> dict:
    from kfp import local

    root_path.mkdir(parents=True, exist_ok=True)
    local.config.LocalExecutionConfig.instance = None  # local.init is a process-wide singleton
    local.init(runner=local_runner, pipeline_root=str(root_path), raise_on_error=True)
    before = set(root_path.iterdir())
    started = time.time()
    # KFP's local runner indents task logs by swapping builtins.print in a context manager; tasks of a
    # ParallelFor run in threads, their contexts interleave and the last one restores a stale function,
    # leaving print patched (it then cannot be pickled). Put the real one back whatever happens.
    real_print = builtins.print
    try:
        embedded = {k: shape.pop(k) for k in ("config_yaml",) if k in shape}
        with cheap_self_naming():  # KFP's task setters stop formatting the whole stack (pipelines/kfp_build.py)
            if which == "distillation":
                build_pipeline()(
                    profile=profile,
                    extra_overrides=overrides,
                    data_window=data_window,
                    teacher_source=teacher_source,
                    **embedded,
                )
            else:
                from pipelines.autodistill import build_autodistill

                build_autodistill(False, **shape)(profile=profile, extra_overrides=overrides, **embedded)
    finally:
        builtins.print = real_print
    new = sorted(set(root_path.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    run_dir = new[-1] if new else max(root_path.iterdir(), key=lambda p: p.stat().st_mtime)
    summary = summarize(run_dir)
    summary["wall_seconds"] = time.time() - started
    summary["step_seconds"] = _step_seconds(summary, cfg)
    print_summary(summary)
    return summary


def _step_seconds(summary: dict, cfg) -> list:
    """Per-step seconds from the pipeline's MLflow parent run, plus the overhead row (logged there too)."""
    from kdflow.steps.timing import pipeline_breakdown

    lineage = (summary.get("evaluation") or {}).get("lineage") or {}
    if not lineage.get("pipeline_run_id"):
        return []
    return pipeline_breakdown(cfg, lineage["pipeline_run_id"], summary["wall_seconds"])


def _find(run_dir: Path, name: str) -> Path | None:
    hits = sorted(run_dir.rglob(name), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def summarize(run_dir: Path) -> dict:
    evaluation = _find(run_dir, "evaluation.json")
    export = _find(run_dir, "export.json")
    promotion = None
    out = {
        "run_dir": str(run_dir),
        "evaluation": json.loads(evaluation.read_text()) if evaluation else None,
        "export": json.loads(export.read_text()) if export else None,
        "report": str(_find(run_dir, "report.md") or ""),
        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", ""),
    }
    promo_task = sorted(run_dir.glob("register-and-promote*"))
    if promo_task:
        executor = _find(promo_task[-1], "executor_output.json")
        if executor:
            params = json.loads(executor.read_text()).get("parameterValues", {})
            if "Output" in params:
                promotion = json.loads(params["Output"])
    out["promotion"] = promotion
    out["reused"] = reused_steps(run_dir)
    return out


def reused_steps(run_dir: Path) -> dict[str, str]:
    """step name -> the pipeline run whose model it reused (storage.reuse), from the steps' step.json."""
    from kdflow.steps.results import STEP_FILE
    from kdflow.steps.train import STEP_NAMES

    found = {}
    for path in sorted(run_dir.rglob(STEP_FILE)):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(result, dict) and result.get("reused_from") and result.get("role") in STEP_NAMES:
            found[STEP_NAMES[result["role"]]] = str(result["reused_from"].get("pipeline_run_id") or "?")
    return found


def print_summary(summary: dict) -> None:
    from kdflow.evaluation.gate import gate_lines, verdict
    from kdflow.evaluation.report import render_table, robust_settings, summary_rows

    ev, ex = summary["evaluation"], summary["export"]
    print("\n=== kdflow summary ===")
    if ev:
        print(render_table(summary_rows(ev, ex), robust_settings(ev)))
        if ev.get("robust_gain") is not None:
            print(f"\nRobust gain over scratch {100 * ev['robust_gain']:+.2f} pt (PGD, test subset)")
        if ev.get("transfer_rate") is not None:
            print(
                f"\nKD gain over scratch {100 * ev['kd_gain']:+.2f} pt (test), transfer rate {ev['transfer_rate']:.3f}"
            )
        if ev.get("kd_verdict"):
            print(ev["kd_verdict"])
    if ex:
        print(f"\nGate: {verdict(ex['gate'])}")
        print("\n".join(gate_lines(ex["gate"], "  - ")))
    promo = summary.get("promotion")
    print(f"Promotion: {promo['reason'] if promo else 'not run (gate failed)' if ex else 'not run'}")
    print(f"\nMLflow:        {summary['tracking_uri']}  (mlflow ui --backend-store-uri {summary['tracking_uri']})")
    print(f"Pipeline root: {summary['run_dir']}")
    print(f"Report:        {summary['report']}")
    if "wall_seconds" in summary:
        print(f"Wall time:     {summary['wall_seconds']:.0f} s")
    if summary.get("step_seconds"):
        from kdflow.steps.timing import render_breakdown

        print(
            f"\nWhere the time went (MLflow: step_seconds.* on the pipeline run):\n"
            f"{render_breakdown(summary['step_seconds'], summary['wall_seconds'])}"
        )
    for step, run in sorted((summary.get("reused") or {}).items()):
        print(f"Reused:        {step}: the model pipeline run {run} trained on the same inputs (storage.reuse)")


def _client(host: str):
    import kfp

    return kfp.Client(host=host)


def _arguments(profile: str, overrides: list[str], data_window: str) -> dict:
    return {"profile": profile, "extra_overrides": list(overrides), "data_window": data_window}


def submit(host: str, profile: str, overrides: list[str], data_window: str, experiment: str) -> str:
    _validate_offline(profile, overrides, data_window)
    client = _client(host)
    run = client.create_run_from_pipeline_func(
        build_pipeline(),
        arguments=_arguments(profile, overrides, data_window),
        experiment_name=experiment,
        enable_caching=None,
    )
    return run.run_id


def _validate_offline(profile: str, overrides: list[str], data_window: str) -> None:
    from kdflow.config import knob_overrides

    load_config(DEFAULT_CONFIG, profile, knob_overrides(data_window=data_window) + overrides)


def validate_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6:
        raise ConfigError(
            "--cron",
            f"'{cron}' has {len(fields)} fields; KFP wants 6 (seconds first)",
            "write e.g. '0 0 3 * * *' for 03:00 every day",
        )
    return cron


def schedule(
    host: str, cron: str, name: str, profile: str, overrides: list[str], data_window: str, experiment: str
) -> str:
    """Upload a pipeline version and create a recurring run (max_concurrency=1, no catch-up)."""
    validate_cron(cron)
    _validate_offline(profile, overrides, data_window)
    client = _client(host)
    with tempfile.TemporaryDirectory() as d:
        package = compile_pipeline(Path(d) / "pipeline.yaml")
        version_name = f"{PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
        except Exception:  # noqa: BLE001 - absent pipeline
            pipeline_id = None
        if pipeline_id:
            version = client.upload_pipeline_version(
                str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id
            )
        else:
            uploaded = client.upload_pipeline(str(package), pipeline_name=PIPELINE_NAME)
            pipeline_id = uploaded.pipeline_id
            version = client.upload_pipeline_version(
                str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id
            )
    exp = client.create_experiment(experiment)
    job = client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=name,
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        pipeline_id=pipeline_id,
        version_id=version.pipeline_version_id,
        params=_arguments(profile, overrides, data_window),
        enabled=True,
    )
    return job.recurring_run_id
