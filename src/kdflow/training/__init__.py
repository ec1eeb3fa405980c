"""Training: objectives, losses and their registry, the trainer and its setup (device, DDP, optimizer,
schedule, allocator), the collapse guard, adversarial training and data-free distillation.

May import kdflow.config, kdflow.errors, kdflow.infra, kdflow.data and kdflow.models, and the metrics of
kdflow.evaluation for per-epoch validation; never release or steps.
"""
