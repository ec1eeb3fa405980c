from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def register_and_promote(config: Input[Artifact], dataset: Input[Dataset], student: Input[Model],
                         exported: Input[Model], pipeline_run_id: str) -> str:
    """Register the student as challenger; move the champion alias only when it wins."""
    import json
    import tempfile

    from kdflow import steps
    from kdflow.config import load_config

    with tempfile.TemporaryDirectory(prefix="promote-") as out:  # the decision is the output; the folder goes
        decision = steps.promote(load_config(config.path), dataset.path, student.path, exported.path, out,
                                 steps.RunContext(pipeline_run_id))
    return json.dumps(decision)
