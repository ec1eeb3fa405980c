"""CPU choice: torch.compile for the teacher's training step, the largest step of the full DAG.

The full profile's DAG spends over half its wall training the resnet20 teacher (bf16 autocast + channels_last,
the defaults); bench/compile.py measured compiling only frozen forwards. Here one resnet20 train step at batch
128 (forward under bf16 autocast, cross-entropy, backward, SGD nesterov), eager against ``torch.compile``d,
identically seeded, interleaved over rounds (medians) after warm-up; the compile time (the first calls) is
timed apart, with the batches to break even and what a 15-epoch teacher (406 batches an epoch) would save.

    .venv/bin/python bench/teacher_compile.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

from kdflow.models import zoo as models  # noqa: E402

BATCHES_PER_EPOCH = 406  # 51,899 train images / 128


def train_step(compiled: bool):
    torch.manual_seed(0)
    model = models.build_model("resnet20").to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    forward = torch.compile(model) if compiled else model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), generator=gen)

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return 1000 * (time.perf_counter() - t0)

    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(2)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdflow-inductor-")  # compile timed cold
    eager = train_step(False)
    t0 = time.perf_counter()
    try:
        compiled = train_step(True)
        for _ in range(3):
            compiled()
    except Exception as e:  # noqa: BLE001  # a variant that fails to compile is recorded, not hidden
        write_section("CPU choice: torch.compile for the teacher's training step", f"Compiling failed: `{e!r}`.")
        print(f"compile failed: {e!r}")
        return 1
    compile_s = time.perf_counter() - t0
    for _ in range(3):
        eager()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(a.rounds):
        times["eager"].append(eager())
        times["compiled"].append(compiled())
    e_ms, c_ms = statistics.median(times["eager"]), statistics.median(times["compiled"])
    saved_ms = e_ms - c_ms
    even = f"{1000 * compile_s / saved_ms:,.0f}" if saved_ms > 0 else "never"
    epoch_saving = 15 * BATCHES_PER_EPOCH * saved_ms / 1000 - compile_s
    body = "\n".join(
        [
            f"resnet20 train step, batch 128, bf16 autocast + channels_last (the teacher's defaults), 2 threads, "
            f"torch {torch.__version__}; {a.rounds} interleaved rounds after 3 warm-up calls each, medians; compile "
            "time = the first 3 calls of the compiled step, cold (a fresh inductor cache). Random inputs (timing only).",
            "",
            "| train step | eager ms | compiled ms | compiled / eager | compile time (s) | batches to break even |",
            "|---|---|---|---|---|---|",
            f"| resnet20, bf16 + channels_last | {e_ms:.1f} | {c_ms:.1f} | {c_ms / e_ms:.2f}x | {compile_s:.1f} | {even} |",
            "",
            f"A 15-epoch teacher ({BATCHES_PER_EPOCH} batches an epoch) would save {epoch_saving:.0f} s with compiling "
            f"paid (the step alone; data and evaluation unchanged).",
        ]
    )
    print(body)
    write_section("CPU choice: torch.compile for the teacher's training step", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
