"""CPU choice: glibc allocator settings (kdflow.infra.allocator, train.keep_freed_memory), measured.

Allocator state is process-wide, so every timing runs in a fresh interpreter: the kdflow online KD step
(resnet20 -> cnn-small, batch 128) and the teacher-cache forward (resnet20, batch 256), with the settings
on and off, interleaved over rounds; medians of the per-process medians. Minor page faults and kernel
CPU time come from getrusage.

    .venv/bin/python bench/allocator.py [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

PROBE = r"""
import json, resource, statistics, sys, time
import torch
from kdflow.infra import allocator
from kdflow.models import zoo as models
from kdflow.config import build_config
from kdflow.training.objective import DistillObjective
from kdflow.training.trainer import _TrainStep, build_optimizer
mode, steps = sys.argv[1], int(sys.argv[2])
if mode == "on":
    assert allocator.keep_freed_memory()
torch.set_num_threads(2)
torch.manual_seed(0)
cfg = build_config({})
teacher = models.build_model("resnet20").eval()
student = models.build_model("cnn-small")
step = _TrainStep(student, DistillObjective([teacher], student, cfg.distill, (1, 28, 28), 10))
opt = build_optimizer(list(student.parameters()), cfg.train, 0.01)
x, y, xc = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)), torch.randn(256, 1, 28, 28)
def kd():
    loss, _, _ = step(x, y, 0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
def cache_fwd():
    with torch.no_grad():
        teacher(xc)
out = {}
for name, fn in (("kd", kd), ("cache", cache_fwd)):
    for _ in range(3):
        fn()
    r0, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out[name] = {"ms": 1000 * statistics.median(times), "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
                 "sys": (r1.ru_stime - r0.ru_stime) / max(r1.ru_stime - r0.ru_stime + r1.ru_utime - r0.ru_utime, 1e-9)}
print(json.dumps(out))
"""


def run(mode: str, steps: int) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode, str(steps)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    rounds, steps = (2, 5) if a.quick else (a.rounds, a.steps)
    res = {"off": [], "on": []}
    for r in range(rounds):  # interleaved: drift hits both alike
        for mode in ("off", "on"):
            res[mode].append(run(mode, steps))
            print(f"round {r + 1}/{rounds} {mode}: {res[mode][-1]}", flush=True)

    def med(mode: str, what: str, key: str) -> float:
        return statistics.median(x[what][key] for x in res[mode])

    lines = [
        "| work | allocator | ms per batch | minor page faults per batch | kernel share of CPU time | vs default |",
        "|---|---|---|---|---|---|",
    ]
    for what, label in (("kd", "online KD step, batch 128"), ("cache", "teacher-cache forward, batch 256")):
        for mode, name in (("off", "glibc default"), ("on", "keep_freed_memory (kdflow default)")):
            lines.append(
                f"| {label} | {name} | {med(mode, what, 'ms'):.1f} | {med(mode, what, 'faults'):,.0f} | "
                f"{100 * med(mode, what, 'sys'):.0f}% | {med(mode, what, 'ms') / med('off', what, 'ms'):.2f}x |"
            )
    body = (
        f"{rounds} rounds, each a fresh process per setting (allocator state is process-wide), {steps} timed "
        "batches per process after 3 warm-up ones, 2 threads; medians.\n\n" + "\n".join(lines)
    )
    write_section("CPU choice: allocator" + (" (quick)" if a.quick else ""), body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
