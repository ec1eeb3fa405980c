from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def tune_conclude(config: Input[Artifact], dataset: Input[Dataset], teacher: Input[Model], study: Input[Artifact],
                  final_dataset: Input[Dataset], best_config: Output[Artifact], tune_report: Output[Artifact], summary: Output[Markdown]):
    """Pick the student, compare it with its tuned scratch twin, write the Pareto front and the best config; a
    final rung's records count only where trained on ``final_dataset`` (tune setup's, by its digest)."""
    import os
    from pathlib import Path

    from kdflow.config import load_config
    from kdflow.tune import rounds

    cfg = load_config(config.path)
    result = rounds.conclude(cfg, Path(study.path), Path(dataset.path),
                             Path(os.path.join(teacher.path, "model.pt")), Path(tune_report.path),
                             Path(best_config.path), Path(final_dataset.path) if cfg.tune.final.top_k else None)
    stated = rounds.read_plan(Path(study.path))  # the cost setup stated before any trial
    with open(summary.path, "w") as fh:
        fh.write("\n\n".join(([stated] if stated else []) + result.verdict))
