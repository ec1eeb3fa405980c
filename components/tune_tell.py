from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def tune_tell(config: Input[Artifact], study: Input[Artifact], results: list, study_out: Output[Artifact]):
    """Record a round's trial results in (a new copy of) the study."""
    from pathlib import Path

    from kdflow.config import load_config
    from kdflow.tune import rounds

    rounds.tell(load_config(config.path), Path(study.path), Path(study_out.path), results)
