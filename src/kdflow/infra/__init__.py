"""Infrastructure: MLflow tracking (and the cached schema a new local store starts from), models fetched by
MLflow URI, local/S3 storage,
atomic file io, checkpoints and pretrained weights, fingerprints, reuse by fingerprint, the KFP glue
(artifact metadata) and the local server stack.

The base every other room stands on: may import kdflow.config, kdflow.errors and (checkpoints) the model
zoo kdflow.models (checkpoints and pretrained weights); never data, training, evaluation or release at import time.
"""
