from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def train_transfer_baselines(config: Input[Artifact], dataset: Input[Dataset], teacher: Input[Model],
                             scratch: Input[Model], pipeline_run_id: str, baselines: Output[Model]):
    """The transfer set's baselines (self-training twin, labels-only distilled); an index saying none otherwise."""
    import os

    from kdflow import steps
    from kdflow.config import load_config

    index = steps.train_transfer_baselines(load_config(config.path), dataset.path, os.path.join(teacher.path, "model.pt"),
                                           scratch.path, baselines.path, steps.RunContext(pipeline_run_id))
    baselines.metadata["trained"] = index["trained"]
