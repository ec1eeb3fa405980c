from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def finalize(config_yaml: str, profile: str, extra_overrides: list, pipeline_run_id: str,
             status: PipelineTaskFinalStatus):
    """Exit handler: close this pipeline run's MLflow runs with its final status."""
    from kdflow import steps
    from kdflow.config import config_from_yaml_text

    cfg = config_from_yaml_text(config_yaml, profile or None, [str(o) for o in extra_overrides])
    print(steps.finalize(cfg, pipeline_run_id, status.state))
