from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def tune_setup(config: Input[Artifact], dataset: Input[Dataset], teacher: Input[Model], pipeline_run_id: str, trials: int,
               study: Output[Artifact], teacher_cache: Output[Artifact], final_dataset: Output[Dataset]):
    """Create the empty study and the teacher cache every trial of the tune reads; with a final rung, its data
    (the whole train split) and its caches; state the cost of ``trials`` per study (rounds x parallel, compiled)."""
    import os
    from pathlib import Path

    from kdflow.config import load_config
    from kdflow.tune import rounds

    rounds.setup(load_config(config.path), Path(dataset.path), Path(os.path.join(teacher.path, "model.pt")),
                 Path(study.path), Path(teacher_cache.path), Path(final_dataset.path), pipeline_run_id, trials)
