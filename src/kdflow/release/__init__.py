"""Release: export and verification of the bare student, registry promotion under a lease, predict.

May import every earlier room (config, infra, data, models, evaluation); never steps or the CLI.
"""
