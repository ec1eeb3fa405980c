from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def train_student_scratch(config: Input[Artifact], dataset: Input[Dataset], pipeline_run_id: str,
                          student: Output[Model], metrics: Output[Metrics]):
    """Train the student from scratch: the baseline of the transfer rate."""
    from kdflow import steps
    from kdflow.config import load_config
    from kdflow.infra.kfp_io import fill_model_metadata, log_scalar_metrics

    info = steps.train(load_config(config.path), "scratch", dataset.path, student.path, steps.RunContext(pipeline_run_id))
    assert info is not None  # None only on a DDP rank other than the main one; a component is one process
    fill_model_metadata(student, info)
    log_scalar_metrics(metrics, info["metrics"])
