"""Speed rows of bench/PROTOCOL.md, measured in one process, interleaved, median of repeats.

- t_student, t_teacher: a hand-written student step and teacher forward on one batch of 128;
- t_kd: kdflow's online KD step (its objective + trainer step module) on the same batch;
  kdflow's overhead = t_kd / (t_student + t_teacher);
- epoch seconds: kdflow scratch, kdflow online KD, kdflow cached KD (cache build timed apart), and the
  hand-written reference KD loop (torchvision DataLoader + PIL augmentation);
- data loading alone for one epoch: torchvision DataLoader (0 and 2 workers) vs kdflow's tensor loader;
- the CPU choices: channels_last and bf16 autocast, each measured on the KD step.

    .venv/bin/python bench/speed.py [--quick] [--teacher resnet20] [--student cnn-small]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_kd  # noqa: E402
from results import write_section  # noqa: E402

from kdflow.config import build_config  # noqa: E402
from kdflow.data import cache  # noqa: E402
from kdflow.data import prepared as data  # noqa: E402
from kdflow.infra.allocator import keep_freed_memory  # noqa: E402
from kdflow.models import zoo as models  # noqa: E402
from kdflow.training.objective import DistillObjective, SupervisedObjective  # noqa: E402
from kdflow.training.trainer import _TrainStep, build_optimizer, fit  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats and a 5k-sample epoch (a sanity pass)")
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="cnn-small")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    # kdflow's trainer applies this on its first fit(); applying it up front keeps every row in one allocator
    # state (it is process-wide, so the hand-written rows get it too). bench/allocator.py measures its effect.
    keep_freed_memory()
    repeats = 7 if a.quick else 25
    work = Path(tempfile.mkdtemp(prefix="kdflow-bench-"))
    cfg = build_config({"data": {"train_subset": 5000 if a.quick else None}, "train": {"num_threads": a.threads}})
    data.prepare(cfg.data, work / "data")
    d = data.load_prepared(work / "data")
    norm = data.Normalizer(d.mean, d.std)
    xb, yb, _ = next(data.iterate(d.train, 128, norm, shuffle=True, augment=d.manifest["augmentation"], seed=0))

    torch.manual_seed(0)
    teacher = models.build_model(a.teacher).eval()
    student_ref = models.build_model(a.student)
    student_kd = models.build_model(a.student)
    opt_ref = torch.optim.SGD(student_ref.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    objective = DistillObjective([teacher], student_kd, cfg.distill, (1, 28, 28), 10)
    step_module = _TrainStep(student_kd, objective)
    opt_kd = build_optimizer(list(student_kd.parameters()), cfg.train, 0.01)

    def kdflow_step(module=step_module, opt=opt_kd, x=xb):
        loss, _, _ = module(x, yb, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def teacher_fwd():
        with torch.no_grad():
            teacher(xb)

    # interleave: each round times every variant once, so drift hits all alike
    rows = {"student": [], "teacher": [], "kd": []}
    for _ in range(repeats):
        rows["student"].append(median_ms(lambda: reference_kd.student_step(student_ref, opt_ref, xb, yb), 1))
        rows["teacher"].append(median_ms(teacher_fwd, 1))
        rows["kd"].append(median_ms(kdflow_step, 1))
    t_student, t_teacher, t_kd = (statistics.median(rows[k]) for k in ("student", "teacher", "kd"))
    overhead = t_kd / (t_student + t_teacher)
    print(f"t_student {t_student:.1f} ms, t_teacher {t_teacher:.1f} ms, t_kd {t_kd:.1f} ms, ratio {overhead:.3f}")

    # CPU choices on the KD step: channels_last and bf16 autocast
    choices = []
    cl_teacher = models.build_model(a.teacher).eval().to(memory_format=torch.channels_last)
    cl_student = models.build_model(a.student).to(memory_format=torch.channels_last)
    cl_obj = DistillObjective([cl_teacher], cl_student, cfg.distill, (1, 28, 28), 10)
    cl_module = _TrainStep(cl_student, cl_obj)
    cl_opt = build_optimizer(list(cl_student.parameters()), cfg.train, 0.01)
    x_cl = xb.contiguous(memory_format=torch.channels_last)

    def bf16_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _, _ = step_module(xb, yb, 0)
        opt_kd.zero_grad(set_to_none=True)
        loss.backward()
        opt_kd.step()

    variants = {
        "fp32 contiguous (default)": kdflow_step,
        "channels_last": lambda: kdflow_step(cl_module, cl_opt, x_cl),
        "bf16 autocast": bf16_step,
    }
    timings = {k: [] for k in variants}
    for _ in range(max(5, repeats // 2)):
        for k, fn in variants.items():
            timings[k].append(median_ms(fn, 1))
    base = statistics.median(timings["fp32 contiguous (default)"])
    for k, v in timings.items():
        choices.append(f"| {k} | {statistics.median(v):.1f} | {statistics.median(v) / base:.2f}x |")

    # epochs: kdflow scratch, online KD, cached KD; the reference loop; data loading alone
    train_cfg = cfg.train.model_copy(update={"warmup_epochs": 0})
    epoch = {}
    torch.manual_seed(0)
    s = models.build_model(a.student)
    t0 = time.perf_counter()
    fit(s, SupervisedObjective(), d, train_cfg, epochs=1, lr=0.1, out_dir=work / "scratch", resume=False)
    epoch["kdflow scratch"] = time.perf_counter() - t0
    torch.manual_seed(0)
    s = models.build_model(a.student)
    t0 = time.perf_counter()
    fit(
        s,
        DistillObjective([teacher], s, cfg.distill, (1, 28, 28), 10),
        d,
        train_cfg,
        epochs=1,
        lr=0.1,
        out_dir=work / "online",
        resume=False,
    )
    epoch["kdflow online KD"] = time.perf_counter() - t0
    key = cache.cache_key("bench-teacher", d, 1, 0)
    t0 = time.perf_counter()
    tc = cache.build(teacher, d, key)
    cache_build = time.perf_counter() - t0
    torch.manual_seed(0)
    s = models.build_model(a.student)
    t0 = time.perf_counter()
    fit(
        s,
        DistillObjective([teacher], s, cfg.distill, (1, 28, 28), 10),
        d,
        train_cfg,
        epochs=1,
        lr=0.1,
        out_dir=work / "cached",
        resume=False,
        teacher_cache=tc,
    )
    epoch["kdflow cached KD"] = time.perf_counter() - t0

    ref_work = work / "tv"
    dl = reference_kd.loader(ref_work, num_workers=0)
    if a.quick:
        dl = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dl.dataset, range(5000)), batch_size=128, shuffle=True, drop_last=True
        )
    torch.manual_seed(0)
    epoch["hand-written KD loop (DataLoader, PIL aug)"] = reference_kd.kd_epoch(
        models.build_model(a.student), teacher, dl
    )

    loading = {}
    n_ref = len(dl.dataset)
    for workers in (0, 2):
        dlw = reference_kd.loader(ref_work, num_workers=workers)
        if a.quick:
            dlw = torch.utils.data.DataLoader(
                torch.utils.data.Subset(dlw.dataset, range(5000)),
                batch_size=128,
                shuffle=True,
                drop_last=True,
                num_workers=workers,
            )
        t0 = time.perf_counter()
        for _ in dlw:
            pass
        loading[f"torchvision DataLoader + PIL aug, {workers} workers"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in data.iterate(d.train, 128, norm, shuffle=True, augment=d.manifest["augmentation"], seed=1, drop_last=True):
        pass
    loading["kdflow preloaded tensors + batched tensor aug"] = time.perf_counter() - t0

    n = len(d.train)
    body = [
        f"Teacher `{a.teacher}`, student `{a.student}`, batch 128, {a.threads} threads. Per-batch times are "
        f"medians of {repeats} interleaved rounds; epochs are single runs over {n:,} kdflow samples "
        f"({n_ref:,} for the hand-written loop).",
        "",
        "| per batch of 128 | ms |",
        "|---|---|",
        f"| t_student (hand-written student step) | {t_student:.1f} |",
        f"| t_teacher (teacher forward, eval, no_grad) | {t_teacher:.1f} |",
        f"| t_kd (kdflow online KD step) | {t_kd:.1f} |",
        f"| **t_kd / (t_student + t_teacher)** | **{overhead:.3f}** |",
        "",
        "| epoch | seconds |",
        "|---|---|",
    ]
    body += [f"| {k} | {v:.1f} |" for k, v in epoch.items()]
    body += [
        f"| teacher cache build (1 view, apart from the cached epoch) | {cache_build:.1f} |",
        f"| **cached KD epoch / scratch epoch** | **{epoch['kdflow cached KD'] / epoch['kdflow scratch']:.2f}x** |",
        f"| online KD epoch: hand-written / kdflow | {epoch['hand-written KD loop (DataLoader, PIL aug)'] * n / n_ref / epoch['kdflow online KD']:.2f}x (per sample) |",
        "",
        "| data loading alone, one epoch | seconds |",
        "|---|---|",
    ]
    body += [f"| {k} | {v:.2f} |" for k, v in loading.items()]
    body += [
        "",
        "kdflow's epochs include its end-of-epoch validation pass and checkpoint write.",
        "",
        "CPU choices on the KD step (interleaved medians):",
        "",
        "| variant | ms per batch | vs default |",
        "|---|---|---|",
        *choices,
        "",
        "torch.compile is measured by bench/compile.py (its own section); the trainer runs eager unless "
        "distill.compile_teacher is set.",
    ]
    text = "\n".join(body)
    print(text)
    print(write_section("Speed" + (" (quick)" if a.quick else ""), text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
