"""The one pinned component image (built from docker/Dockerfile; see README 'Deploy to a Kubeflow cluster')."""

KDFLOW_IMAGE = "ghcr.io/kdflow/kdflow:0.1.0"
