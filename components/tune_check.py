from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def tune_check(config: Input[Artifact], dataset: Input[Dataset], final_top_k: int):
    """Refuse a final rung other than the compiled one (``final_top_k``), and a budget no student meets, before
    the teacher is trained: an image folder's input shape and classes are known only once prep has run."""
    from pathlib import Path

    from kdflow.config import load_config
    from kdflow.tune import rounds

    rounds.check_cluster_form(load_config(config.path), Path(dataset.path), final_top_k)
