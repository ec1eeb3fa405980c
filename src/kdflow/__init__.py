"""kdflow: knowledge distillation from teacher to student, as a library and a Kubeflow pipeline."""

__version__ = "0.1.0"
