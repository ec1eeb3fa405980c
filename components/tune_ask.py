from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def tune_ask(config: Input[Artifact], dataset: Input[Dataset], study: Input[Artifact], kind: str, count: int,
             study_out: Output[Artifact], rung: str = "search") -> list:
    """Ask the study for the next round's trials (their sampled student and recipe); rung "final": its best
    trials again, at the final length."""
    from pathlib import Path

    from kdflow.config import load_config
    from kdflow.tune import rounds

    return rounds.ask(load_config(config.path), Path(study.path), Path(study_out.path), Path(dataset.path), kind, count,
                      rung)
