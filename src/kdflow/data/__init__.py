"""Data: raw sources (IDX, image folders, S3), prepared splits with digests, batches, mixing, the teacher cache.

Owns everything between the files a user brings and the tensors a trainer consumes. May import
kdflow.config, kdflow.errors and kdflow.infra (io, storage); never models, training or later rooms.
"""
