from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def tune_trial(config: Input[Artifact], dataset: Input[Dataset], teacher: Input[Model],
               teacher_cache: Input[Artifact], spec: dict, pipeline_run_id: str) -> dict:
    """Train one trial of the tune (one pod per trial) and return its result for the study."""
    import os
    from pathlib import Path

    from kdflow.config import load_config
    from kdflow.tune import rounds

    return rounds.run_spec(load_config(config.path), Path(dataset.path), Path(os.path.join(teacher.path, "model.pt")),
                           Path(teacher_cache.path), spec, pipeline_run_id)
