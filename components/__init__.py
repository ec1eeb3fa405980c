"""KFP v2 components: thin wrappers that turn typed artifacts into one kdflow call each."""

from components.distill_student import distill_student
from components.evaluate import evaluate
from components.export import export
from components.finalize import finalize
from components.prep_data import prep_data
from components.register_and_promote import register_and_promote
from components.train_student_scratch import train_student_scratch
from components.train_teacher import train_teacher

__all__ = ["prep_data", "train_teacher", "train_student_scratch", "distill_student", "evaluate", "export",
           "register_and_promote", "finalize"]
