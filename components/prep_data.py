from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def prep_data(config_yaml: str, profile: str, extra_overrides: list, pipeline_run_id: str,
              dataset_name: str, data_window: str, teacher_arch: str, teacher_source: str, student_arch: str,
              method: str, temperature: float, alpha: float, teacher_epochs: int, student_epochs: int,
              min_accuracy: float, min_retention: float, min_improvement: float,
              data_free: bool, adversarial_eps: float, min_robust_accuracy: float,
              dataset: Output[Dataset], config: Output[Artifact]):
    """Resolve the config once (file + profile + parameters), then load, split and preload the dataset."""
    from kdflow import steps
    from kdflow.config import config_from_yaml_text, knob_overrides
    from kdflow.infra.io import atomic_write_text

    overrides = knob_overrides(
        dataset_name=dataset_name, data_window=data_window, teacher_arch=teacher_arch, teacher_source=teacher_source,
        student_arch=student_arch, method=method, temperature=temperature, alpha=alpha, teacher_epochs=teacher_epochs,
        student_epochs=student_epochs, min_accuracy=min_accuracy, min_retention=min_retention,
        min_improvement=min_improvement, data_free=data_free, adversarial_eps=adversarial_eps,
        min_robust_accuracy=min_robust_accuracy) + [str(o) for o in extra_overrides]
    cfg = config_from_yaml_text(config_yaml, profile or None, overrides)
    atomic_write_text(config.path, cfg.to_yaml())
    config.metadata.update({"config_hash": cfg.digest(), "profile": cfg.profile})
    info = steps.prep(cfg, dataset.path, steps.RunContext(pipeline_run_id))
    dataset.metadata.update({"digest": info["digest"], "dataset": info["dataset"], "window": info["window"],
                             "counts": info["counts"], "mlflow_parent_run_id": info["parent_run_id"] or ""})
