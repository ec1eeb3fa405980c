"""The glibc allocator settings remove the page faults of re-allocating activations every batch.

Counts minor page faults (a deterministic count, not a timing) in fresh processes: allocator state is
process-wide, so each variant needs its own interpreter.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

PROBE = """
import resource, sys, torch
from kdflow.infra import allocator
from kdflow.models import zoo as models
applied = allocator.keep_freed_memory() if sys.argv[1] == "on" else False
torch.set_num_threads(1)
m = models.build_model("resnet20").eval()
x = torch.randn(128, 1, 28, 28)
with torch.no_grad():
    for _ in range(2):
        m(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        m(x)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=300)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc mallopt only")
def test_keep_freed_memory_stops_per_batch_page_faults():
    applied, tuned = _faults("on")
    _, default = _faults("off")
    assert applied
    assert default > 20_000, "the probe no longer re-allocates: it cannot show the effect"
    assert tuned < default / 10
