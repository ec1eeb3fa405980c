"""Whether a data-free generator's training fits in memory, refused in one line before it starts (a generator too
wide for the machine would otherwise be killed by the OOM killer mid-run, with nothing said)."""

from __future__ import annotations

import os
from pathlib import Path

from kdflow.config.adversarial import GeneratorConfig
from kdflow.errors import ConfigError


def memory_limit_bytes() -> int:
    """The cgroup's memory limit, else the machine's physical memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def generator_training_bytes(g: GeneratorConfig, channels: int, image_size: int) -> int:
    """An estimate of one generator step's memory: weights, Adam state and grads, and its activations
    (kept for the backward pass, about 3 tensors per layer output) at ``g.batch``."""
    side = image_size // 4
    params = g.latent * 2 * g.width * side * side + 9 * (4 * g.width * g.width + 2 * g.width * g.width)
    acts_per_image = (
        2 * g.width * side * side * 3  # fc out, BN
        + 2 * g.width * (2 * side) ** 2 * 4  # up, conv, BN, act
        + g.width * (4 * side) ** 2 * 4  # up, conv, BN, act
        + channels * (4 * side) ** 2 * 2
    )
    return 4 * (4 * params + 3 * acts_per_image * g.batch)


def check_generator_fits(g: GeneratorConfig, channels: int, image_size: int) -> None:
    need = generator_training_bytes(g, channels, image_size)
    limit = g.memory_limit_mb * 2**20 if g.memory_limit_mb else memory_limit_bytes()
    if need > limit // 2:  # the teacher, the student and their activations need the other half
        raise ConfigError(
            "distill.generator",
            f"width {g.width} at batch {g.batch} needs about {need / 2**30:.1f} GiB, over half of the "
            f"{limit / 2**30:.1f} GiB memory limit",
            "lower distill.generator.width or distill.generator.batch",
        )
