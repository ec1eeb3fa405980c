"""The pipeline steps as plain functions over local directories; the CLI and the KFP components call these.

Every step writes its outputs and ``config.resolved.yaml`` into its output directory, plus
``step.json``: its typed result (:mod:`kdflow.steps.results`), which later steps read back.

- :mod:`~kdflow.steps.context`: the store, the tracker and the MLflow parent run, opened once per step
- :mod:`~kdflow.steps.train`: prep, teacher, scratch and distilled student
- :mod:`~kdflow.steps.evaluation`: teacher vs scratch vs student, the quality gate
- :mod:`~kdflow.steps.release`: export with the final gate, promotion, the exit handler
- :mod:`~kdflow.steps.record`: what each step logs to MLflow
- :mod:`~kdflow.steps.orchestrate`: the steps in DAG order without KFP (``kdflow run``)
"""

from kdflow.steps.context import RunContext, start_pipeline
from kdflow.steps.evaluation import evaluate_models
from kdflow.steps.orchestrate import Layout, run_all
from kdflow.steps.release import export_student, finalize, promote
from kdflow.steps.train import distill, load_teacher, prep, provide_teacher, train

__all__ = [
    "RunContext",
    "start_pipeline",
    "prep",
    "train",
    "provide_teacher",
    "load_teacher",
    "distill",
    "evaluate_models",
    "export_student",
    "promote",
    "finalize",
    "run_all",
    "Layout",
]
