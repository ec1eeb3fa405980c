from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def evaluate(config: Input[Artifact], dataset: Input[Dataset], teacher: Input[Model], scratch: Input[Model],
             student: Input[Model], baselines: Input[Model], pipeline_run_id: str, metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], report: Output[Markdown], evaluation: Output[Artifact]) -> bool:
    """Teacher vs scratch (vs the transfer set's baselines) vs distilled student; returns the quality gate."""
    import shutil

    from kdflow import steps
    from kdflow.config import load_config
    from kdflow.infra.kfp_io import log_scalar_metrics

    summary = steps.evaluate_models(load_config(config.path), dataset.path, teacher.path, scratch.path, student.path,
                                    evaluation.path, steps.RunContext(pipeline_run_id), baselines.path)
    for name, r in summary["models"].items():
        log_scalar_metrics(metrics, r, prefix=f"{name}_")
    log_scalar_metrics(metrics, {k: summary.get(k) for k in ("transfer_rate", "kd_gain", "kd_gain_vs_selftrain")})
    confusion.log_confusion_matrix(summary["class_names"], summary["models"]["student"]["confusion_matrix"])
    shutil.copyfile(f"{evaluation.path}/report.md", report.path)
    evaluation.metadata["quality_gate"] = summary["quality_gate"]["passed"]
    return bool(summary["quality_gate"]["passed"])
