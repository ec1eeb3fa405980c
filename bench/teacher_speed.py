"""The teacher's CPU choices, timed: one resnet20 training step (forward, backward, SGD) per variant, and
the no-grad forward of the teacher-cache build per batch size. Interleaved rounds, medians.

    .venv/bin/python bench/teacher_speed.py [--teacher resnet20] [--rounds 15]

Variants: fp32 contiguous (kdflow's default), channels_last, bf16 autocast, both, 1 thread instead of 2,
and torch.compile of the step, in fp32 and on top of the teacher's defaults (bf16 + channels_last) (its
compile seconds reported apart, with the steps it takes to pay back).
Speed only: a choice that changes numerics (bf16) needs the accuracy measured before it becomes a default.
Writes the section "Pipeline cost: teacher step choices" of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

from kdflow.infra.allocator import keep_freed_memory  # noqa: E402
from kdflow.models import zoo as models  # noqa: E402


def make_step(arch: str, channels_last: bool, bf16: bool, compiled: bool = False):
    torch.manual_seed(0)
    model = models.build_model(arch).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(128, 1, 28, 28)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def loss_fn(xb, yb):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return F.cross_entropy(model(xb).float(), yb)

    loss_of = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed_ms(fn, threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    keep_freed_memory()
    variants = {
        "fp32 contiguous, 2 threads (default)": (make_step(args.teacher, False, False), 2),
        "channels_last": (make_step(args.teacher, True, False), 2),
        "bf16 autocast": (make_step(args.teacher, False, True), 2),
        "channels_last + bf16": (make_step(args.teacher, True, True), 2),
        "1 thread": (make_step(args.teacher, False, False), 1),
    }
    torch.set_num_threads(2)
    compile_s = {}
    for name, reference, cl_bf16 in (
        ("torch.compile of the step", "fp32 contiguous, 2 threads (default)", False),
        ("channels_last + bf16 + torch.compile (teacher defaults, compiled)", "channels_last + bf16", True),
    ):
        compiled = make_step(args.teacher, cl_bf16, cl_bf16, compiled=True)
        t0 = time.perf_counter()
        compiled()  # the first call compiles (forward and backward graphs)
        compiled()
        compile_s[name] = (time.perf_counter() - t0, reference)
        variants[name] = (compiled, 2)
    for fn, threads in variants.values():  # warm-up
        timed_ms(fn, threads)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (fn, threads) in variants.items():
            times[name].append(timed_ms(fn, threads))
    torch.set_num_threads(2)
    base = statistics.median(times["fp32 contiguous, 2 threads (default)"])
    lines = ["| training step, batch 128 | ms (median) | vs default |", "|---|---|---|"]
    for name, ts in times.items():
        lines.append(f"| {name} | {statistics.median(ts):.1f} | {statistics.median(ts) / base:.2f}x |")
    lines.append("")
    for name, (seconds, reference) in compile_s.items():
        saved = statistics.median(times[reference]) - statistics.median(times[name])
        payback = f"{seconds * 1000 / saved:.0f} steps" if saved > 0 else "never"
        lines.append(f"{name}: {seconds:.1f} s of compiling (two first calls), paid back against {reference} "
                     f"after {payback}.")  # fmt: skip

    # the teacher-cache build: a no-grad forward over the training split, batch size free
    teacher = models.build_model(args.teacher).eval()
    rows = ["", "| cache-build forward (no grad) | ms per 1,000 images |", "|---|---|"]
    per_k: dict[int, list[float]] = {b: [] for b in (128, 256, 512, 1024)}
    with torch.no_grad():
        for _ in range(max(3, args.rounds // 3)):
            for b in per_k:
                x = torch.randn(b, 1, 28, 28)
                per_k[b].append(timed_ms(lambda x=x: teacher(x), 2) * 1000 / b)
    rows += [f"| batch {b} | {statistics.median(v):.0f} |" for b, v in per_k.items()]
    # the cache build's layout and precision at its batch (256): channels_last is the same arithmetic,
    # bf16 changes the stored soft targets (not a default without its accuracy measured)
    teacher_cl = models.build_model(args.teacher).eval().to(memory_format=torch.channels_last)
    teacher_cl.load_state_dict(teacher.state_dict())
    forms = {
        "batch 256, fp32 contiguous": (teacher, False, False),
        "batch 256, fp32 channels_last": (teacher_cl, True, False),
        "batch 256, bf16 autocast + channels_last": (teacher_cl, True, True),
    }
    per_form: dict[str, list[float]] = {k: [] for k in forms}
    x256 = torch.randn(256, 1, 28, 28)
    x256_cl = x256.contiguous(memory_format=torch.channels_last)

    def forward(model, cl, bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x256_cl if cl else x256)

    with torch.no_grad():
        for _ in range(max(3, args.rounds // 3)):
            for name, form in forms.items():
                per_form[name].append(timed_ms(lambda form=form: forward(*form), 2) * 1000 / 256)
    ref = statistics.median(per_form["batch 256, fp32 contiguous"])
    rows += [
        "",
        "| cache-build forward, layout and precision | ms per 1,000 images | vs fp32 contiguous |",
        "|---|---|---|",
    ]
    rows += [f"| {k} | {statistics.median(v):.0f} | {statistics.median(v) / ref:.2f}x |" for k, v in per_form.items()]
    body = "\n".join(lines + rows)
    print(body)
    write_section("Pipeline cost: teacher step choices", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
