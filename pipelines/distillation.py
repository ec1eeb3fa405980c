"""The DAG: prep -> (teacher || scratch) -> distill || transfer-set baselines -> evaluate -> export -> If(gate)
promote, in an ExitHandler."""

import json
from pathlib import Path

import yaml
from kfp import dsl, kubernetes

from components import (
    distill_student,
    evaluate,
    export,
    finalize,
    prep_data,
    register_and_promote,
    train_student_scratch,
    train_teacher,
    train_transfer_baselines,
)
from pipelines.kfp_build import cheaply_named

PIPELINE_NAME = "kdflow-distillation"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist.yaml"
# One line of JSON (valid YAML): KFP copies parameter defaults into a comment header of the compiled
# file, and a multi-line default would break that file as YAML.
EMBEDDED_CONFIG = json.dumps(yaml.safe_load(DEFAULT_CONFIG.read_text()), sort_keys=True)

# Kubernetes Secrets read by reference (k8s/base/secrets.yaml); values never enter the compiled YAML.
S3_SECRET = "kdflow-s3"
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
TRACKING_SECRET = "kdflow-tracking"
TRACKING_SECRET_KEYS = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}

RESOURCES = {  # cpu request, cpu limit, memory request, memory limit
    "prep": ("1", "2", "2G", "4G"),
    "train": ("2", "4", "4G", "8G"),
    "light": ("1", "2", "2G", "4G"),
}


def _configure(
    task: dsl.PipelineTask, kind: str, *, cache: bool, retries: int = 0, shm: bool = False
) -> dsl.PipelineTask:
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES[kind]
    task.set_cpu_request(cpu_req).set_cpu_limit(cpu_lim).set_memory_request(mem_req).set_memory_limit(mem_lim)
    task.set_caching_options(cache)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    if shm:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="1Gi")
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env=S3_SECRET_KEYS, optional=True)
    kubernetes.use_secret_as_env(
        task, secret_name=TRACKING_SECRET, secret_key_to_env=TRACKING_SECRET_KEYS, optional=True
    )
    return task


def _gpu(task: dsl.PipelineTask, use_gpu: bool) -> dsl.PipelineTask:
    if use_gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    return task


def students_and_release(cfg, ds, teacher_model, run_id, use_gpu: bool) -> None:
    """scratch twin || distilled student, the transfer set's baselines -> evaluate -> export -> If(gate) promote: both
    pipelines end so."""
    conf = _configure
    scratch = train_student_scratch(config=cfg, dataset=ds, pipeline_run_id=run_id)
    _gpu(conf(scratch, "train", cache=False, retries=2, shm=True), use_gpu)

    student = distill_student(config=cfg, dataset=ds, teacher=teacher_model, pipeline_run_id=run_id)
    _gpu(conf(student, "train", cache=False, retries=2, shm=True), use_gpu)

    baselines = train_transfer_baselines(  # an index alone when the run has no unlabeled transfer set
        config=cfg, dataset=ds, teacher=teacher_model, scratch=scratch.outputs["student"], pipeline_run_id=run_id
    )
    _gpu(conf(baselines, "train", cache=False, retries=2, shm=True), use_gpu)

    ev = evaluate(
        config=cfg,
        dataset=ds,
        teacher=teacher_model,
        scratch=scratch.outputs["student"],
        student=student.outputs["student"],
        baselines=baselines.outputs["baselines"],
        pipeline_run_id=run_id,
    )
    conf(ev, "light", cache=False)

    ex = export(
        config=cfg,
        dataset=ds,
        student=student.outputs["student"],
        evaluation=ev.outputs["evaluation"],
        pipeline_run_id=run_id,
    )
    conf(ex, "light", cache=False)

    with dsl.If(ex.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - KFP condition
        promo = register_and_promote(
            config=cfg,
            dataset=ds,
            student=student.outputs["student"],
            exported=ex.outputs["exported"],
            pipeline_run_id=run_id,
        )
        conf(promo, "light", cache=False)


# The pipeline parameters that override config fields (kdflow.config.knobs), at their "from the config" values.
KNOB_DEFAULTS = {
    "dataset_name": "",
    "data_window": "",
    "teacher_arch": "",
    "teacher_source": "",
    "student_arch": "",
    "method": "",
    "temperature": -1.0,
    "alpha": -1.0,
    "teacher_epochs": -1,
    "student_epochs": -1,
    "min_accuracy": -1.0,
    "min_retention": -1.0,
    "min_improvement": -1.0,
    "data_free": False,
    "adversarial_eps": -1.0,
    "min_robust_accuracy": -1.0,
}


def prep_task(config_yaml, profile, extra_overrides, run_id, **knobs) -> dsl.PipelineTask:
    """prep_data resolves the config once for the whole DAG; knobs not given keep their config values."""
    prep = prep_data(
        config_yaml=config_yaml,
        profile=profile,
        extra_overrides=extra_overrides,
        pipeline_run_id=run_id,
        **{**KNOB_DEFAULTS, **knobs},
    )
    return _configure(prep, "prep", cache=True)


def exit_handler(config_yaml, profile, extra_overrides, run_id) -> dsl.ExitHandler:
    """finalize closes the pipeline run's MLflow parent run with the run's final status, whether the DAG
    inside succeeded or failed: both pipelines run inside one, so no failed run stays RUNNING."""
    fin = finalize(config_yaml=config_yaml, profile=profile, extra_overrides=extra_overrides, pipeline_run_id=run_id)
    _configure(fin, "light", cache=False)
    fin.set_display_name("finalize")
    return dsl.ExitHandler(fin, name="kdflow-run")


@cheaply_named
def build_pipeline(use_gpu: bool = False):
    """Return the pipeline function (the local runner ignores the Kubernetes-only settings)."""
    conf = _configure

    @dsl.pipeline(name=PIPELINE_NAME, description="Distil a teacher into a small student; export; promote if better.")
    def kdflow_distillation(
        config_yaml: str = EMBEDDED_CONFIG,
        profile: str = "default",
        extra_overrides: list = [],  # noqa: B006 - KFP reads the default
        dataset_name: str = "",
        data_window: str = "",
        teacher_arch: str = "",
        teacher_source: str = "",
        student_arch: str = "",
        method: str = "",
        temperature: float = -1.0,
        alpha: float = -1.0,
        teacher_epochs: int = -1,
        student_epochs: int = -1,
        min_accuracy: float = -1.0,
        min_retention: float = -1.0,
        min_improvement: float = -1.0,
        data_free: bool = False,
        adversarial_eps: float = -1.0,
        min_robust_accuracy: float = -1.0,
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        with exit_handler(config_yaml, profile, extra_overrides, run_id):
            prep = prep_task(
                config_yaml,
                profile,
                extra_overrides,
                run_id,
                dataset_name=dataset_name,
                data_window=data_window,
                teacher_arch=teacher_arch,
                teacher_source=teacher_source,
                student_arch=student_arch,
                method=method,
                temperature=temperature,
                alpha=alpha,
                teacher_epochs=teacher_epochs,
                student_epochs=student_epochs,
                min_accuracy=min_accuracy,
                min_retention=min_retention,
                min_improvement=min_improvement,
                data_free=data_free,
                adversarial_eps=adversarial_eps,
                min_robust_accuracy=min_robust_accuracy,
            )
            cfg, ds = prep.outputs["config"], prep.outputs["dataset"]

            teacher = train_teacher(config=cfg, dataset=ds, pipeline_run_id=run_id)
            _gpu(conf(teacher, "train", cache=True, retries=2, shm=True), use_gpu)
            students_and_release(cfg, ds, teacher.outputs["teacher"], run_id, use_gpu)

    return kdflow_distillation


kdflow_distillation = build_pipeline()
