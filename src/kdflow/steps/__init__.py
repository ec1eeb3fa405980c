"""The pipeline steps as plain functions over local directories; the CLI and the KFP components call these.

Every step writes its outputs and ``config.resolved.yaml`` into its output directory, plus
``step.json``: its typed result (:mod:`kdflow.steps.results`), which later steps read back.

- :mod:`~kdflow.steps.context`: the store, the tracker and the MLflow parent run, opened once per step
- :mod:`~kdflow.steps.prep`: raw data -> prepared splits
- :mod:`~kdflow.steps.train`: the training body (fresh, resumed or reused), teacher and scratch
- :mod:`~kdflow.steps.teacher`: a trained or provided teacher
- :mod:`~kdflow.steps.distill`: the distilled student (through an assistant, if any)
- :mod:`~kdflow.steps.baselines`: the transfer set's baselines (self-training twin, labels-only distilled)
- :mod:`~kdflow.steps.evaluation`: teacher vs scratch vs student, the quality gate
- :mod:`~kdflow.steps.release`: export with the final gate, promotion, the exit handler
- :mod:`~kdflow.steps.record`: what each step logs to MLflow
- :mod:`~kdflow.steps.orchestrate`: the steps in DAG order without KFP (``kdflow run``)
"""

from kdflow.steps.baselines import self_train, train_transfer_baselines
from kdflow.steps.context import RunContext, start_pipeline
from kdflow.steps.distill import distill
from kdflow.steps.evaluation import evaluate_models
from kdflow.steps.orchestrate import Layout, run_all
from kdflow.steps.prep import prep
from kdflow.steps.release import export_student, finalize, promote
from kdflow.steps.teacher import provide_teacher
from kdflow.steps.train import load_teacher, train

__all__ = [
    "RunContext",
    "start_pipeline",
    "prep",
    "train",
    "provide_teacher",
    "load_teacher",
    "distill",
    "self_train",
    "train_transfer_baselines",
    "evaluate_models",
    "export_student",
    "promote",
    "finalize",
    "run_all",
    "Layout",
]
