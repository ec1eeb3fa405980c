"""Automated distillation: an Optuna study over students and recipes under a size or latency budget.

``kdflow tune`` = prep + teacher (once) -> the distillation study -> the scratch twin's study (the same
student, the same trial budget over what they share) -> trials.csv, pareto.csv, pareto.png, best.yaml.
Selection reads the validation split only; the test split is never seen by a study.
"""

from kdflow.tune.run import TuneResult, tune

__all__ = ["TuneResult", "tune"]
