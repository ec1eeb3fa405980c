"""The kdflow KFP pipeline and its entry points (`python -m pipelines compile|run|submit|schedule`)."""
