"""KFP v2 components: thin wrappers that turn typed artifacts into one kdflow call each."""

from components.distill_student import distill_student
from components.evaluate import evaluate
from components.export import export
from components.finalize import finalize
from components.prep_data import prep_data
from components.register_and_promote import register_and_promote
from components.train_student_scratch import train_student_scratch
from components.train_teacher import train_teacher
from components.train_transfer_baselines import train_transfer_baselines
from components.tune_ask import tune_ask
from components.tune_check import tune_check
from components.tune_conclude import tune_conclude
from components.tune_setup import tune_setup
from components.tune_tell import tune_tell
from components.tune_trial import tune_trial

__all__ = ["prep_data", "train_teacher", "train_student_scratch", "distill_student", "train_transfer_baselines",
           "evaluate", "export",
           "register_and_promote", "finalize", "tune_check", "tune_setup", "tune_ask", "tune_trial", "tune_tell", "tune_conclude"]
