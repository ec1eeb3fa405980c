from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def train_teacher(config: Input[Artifact], dataset: Input[Dataset], pipeline_run_id: str,
                  teacher: Output[Model], metrics: Output[Metrics]):
    """Train the teacher, or take the one teacher.source names (which skips training)."""
    from kdflow import steps
    from kdflow.config import load_config
    from kdflow.infra.kfp_io import fill_model_metadata, log_scalar_metrics

    info = steps.provide_teacher(load_config(config.path), dataset.path, teacher.path, steps.RunContext(pipeline_run_id))
    fill_model_metadata(teacher, info)
    log_scalar_metrics(metrics, info["metrics"])
