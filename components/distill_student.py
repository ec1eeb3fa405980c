from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def distill_student(config: Input[Artifact], dataset: Input[Dataset], teacher: Input[Model], pipeline_run_id: str,
                    student: Output[Model], metrics: Output[Metrics]):
    """Distil the frozen teacher into the student with the losses the config names."""
    import os

    from kdflow import steps
    from kdflow.config import load_config
    from kdflow.infra.kfp_io import fill_model_metadata, log_scalar_metrics

    info = steps.distill(load_config(config.path), dataset.path, os.path.join(teacher.path, "model.pt"), student.path,
                         steps.RunContext(pipeline_run_id))
    assert info is not None  # None only on a DDP rank other than the main one; a component is one process
    fill_model_metadata(student, info)
    log_scalar_metrics(metrics, info["metrics"])
