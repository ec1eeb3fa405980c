"""CPU choice: torch.compile (inductor) against eager, on the work kdflow's training spends its time in.

For each piece of work (the teacher forward that dominates online KD and the cache build, the student train
step that is all of a scratch or cached epoch, and the whole online KD step), the eager and the compiled
version are timed interleaved over rounds (medians), after the compiled one has been warmed up; the
compile time (first calls) is timed apart, so the break-even point (batches until compiling pays off) is
shown. Logit parity of the compiled teacher is checked too. A variant that fails to compile is recorded as
failed, not hidden. Then the end-to-end effect of ``distill.compile_teacher``: one online KD epoch and one
teacher-cache view (55k samples), eager against compiled, compile time included.

    .venv/bin/python bench/compile.py [--quick] [--rounds 15]
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

from kdflow.config import build_config  # noqa: E402
from kdflow.data import cache  # noqa: E402
from kdflow.data import prepared as data  # noqa: E402
from kdflow.infra.allocator import keep_freed_memory  # noqa: E402
from kdflow.models import zoo as models  # noqa: E402
from kdflow.models.compiled import compile_frozen  # noqa: E402
from kdflow.training.objective import DistillObjective  # noqa: E402
from kdflow.training.trainer import _TrainStep, build_optimizer, fit  # noqa: E402


def cold() -> None:
    """Every compile is timed cold, as in a fresh container: a new inductor cache dir, dynamo's caches reset."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdflow-inductor-")
    torch._dynamo.reset()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def student_step(module, opt, x, y):
    def step():
        loss = torch.nn.functional.cross_entropy(module(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def kd_step(module, opt, x, y):
    def step():
        loss, _, _ = module(x, y, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def teacher_forward(teacher, x):
    def fwd():
        with torch.no_grad():
            return teacher(x)

    return fwd


def pairs(a_teacher: str, a_student: str) -> dict[str, tuple]:
    """work -> (eager fn, a builder of the compiled fn); built from identically seeded models."""
    cfg = build_config({})
    gen = torch.Generator().manual_seed(0)
    x128, x256 = torch.randn(128, 1, 28, 28, generator=gen), torch.randn(256, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (128,), generator=gen)

    def fresh(arch: str, eval_mode: bool = False):
        torch.manual_seed(0)
        m = models.build_model(arch)
        return m.eval() if eval_mode else m

    teacher = fresh(a_teacher, True)
    compiled_teacher = torch.compile(fresh(a_teacher, True))

    def eager_student():
        s = fresh(a_student)
        return student_step(s, torch.optim.SGD(s.parameters(), lr=0.01, momentum=0.9, nesterov=True), x128, y)

    def compiled_student():
        s = fresh(a_student)
        opt = torch.optim.SGD(s.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        return student_step(torch.compile(s), opt, x128, y)

    def kd(compile_it: bool):
        s = fresh(a_student)
        t = compiled_teacher if compile_it else teacher
        module = _TrainStep(
            torch.compile(s) if compile_it else s, DistillObjective([t], s, cfg.distill, (1, 28, 28), 10)
        )
        return kd_step(module, build_optimizer(list(s.parameters()), cfg.train, 0.01), x128, y)

    return {
        f"teacher forward ({a_teacher}, batch 128, no_grad)": (
            teacher_forward(teacher, x128),
            lambda: teacher_forward(compiled_teacher, x128),
        ),
        f"teacher-cache forward ({a_teacher}, batch 256, no_grad)": (
            teacher_forward(teacher, x256),
            lambda: teacher_forward(compiled_teacher, x256),
        ),
        f"student train step ({a_student}, batch 128)": (eager_student(), compiled_student),
        "online KD step (teacher + student compiled)": (kd(False), lambda: kd(True)),
        "_parity": (lambda: (teacher_forward(teacher, x128)(), teacher_forward(compiled_teacher, x128)()), None),
    }


def end_to_end(a_teacher: str, a_student: str, subset: int | None, work: Path) -> list[str]:
    """One online KD epoch and one cache view through kdflow's own code, eager vs distill.compile_teacher."""
    rows = []
    for compile_teacher in (False, True):
        cfg = build_config(
            {
                "data": {"train_subset": subset},
                "train": {
                    "num_threads": 2,
                    "warmup_epochs": 1,
                },  # the protocol warm-up: lr 0.1 from step 0 collapses cnn-small
                "distill": {"compile_teacher": compile_teacher},
            }
        )
        if not (work / "data" / "manifest.json").is_file():
            data.prepare(cfg.data, work / "data")
        d = data.load_prepared(work / "data")
        torch.manual_seed(0)
        teacher = models.build_model(a_teacher).eval()
        torch.manual_seed(0)
        s = models.build_model(a_student)
        cold()
        t0 = time.perf_counter()
        result = fit(
            s,
            DistillObjective([teacher], s, cfg.distill, (1, 28, 28), 10),
            d,
            cfg.train,
            epochs=1,
            lr=0.1,
            out_dir=work / f"online-{compile_teacher}",
            resume=False,
        )
        epoch_s = time.perf_counter() - t0
        cold()
        t0 = time.perf_counter()
        cache.build(compile_frozen(teacher) if compile_teacher else teacher, d, cache.cache_key("bench", d, 1, 0))
        view_s = time.perf_counter() - t0  # the cache forward compiles anew (batch 256), cold too
        name = "compiled teacher (distill.compile_teacher=true)" if compile_teacher else "eager teacher (default)"
        rows.append((name, epoch_s, result.history[-1]["val_acc"], view_s))
    base_epoch, base_view = rows[0][1], rows[0][3]
    return [
        f"| {n} | {e:.1f} ({e / base_epoch:.2f}x) | {100 * acc:.2f}% | {v:.1f} ({v / base_view:.2f}x) |"
        for n, e, acc, v in rows
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 rounds (a sanity pass)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="cnn-small")
    a = p.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()  # as the trainer does
    rounds = 5 if a.quick else a.rounds
    work = pairs(a.teacher, a.student)
    parity_fn, _ = work.pop("_parity")

    results = {}
    for name, (eager, build_compiled) in work.items():
        cold()
        t0 = time.perf_counter()
        try:
            compiled = build_compiled()
            for _ in range(3):  # the first calls compile (and may recompile once)
                compiled()
        except Exception as exc:  # a compile failure is a measured outcome, recorded as such
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            print(f"{name}: FAILED {results[name]['error']}", flush=True)
            continue
        compile_s = time.perf_counter() - t0
        for _ in range(3):
            eager()
        e_ms, c_ms = [], []
        for _ in range(rounds):  # interleaved: drift hits both alike
            e_ms.append(timed(eager))
            c_ms.append(timed(compiled))
        results[name] = {"eager": statistics.median(e_ms), "compiled": statistics.median(c_ms), "compile_s": compile_s}
        print(f"{name}: {results[name]}", flush=True)

    e2e = end_to_end(a.teacher, a.student, 5000 if a.quick else None, Path(tempfile.mkdtemp(prefix="kdflow-compile-")))
    try:
        eager_out, compiled_out = parity_fn()
        parity = f"{(eager_out - compiled_out).abs().max().item():.2e}"
    except Exception as exc:
        parity = f"not checked ({type(exc).__name__})"

    lines = [
        "| work | eager ms | compiled ms | compiled / eager | compile time (s) | batches to break even |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | - | failed: {r['error']} | - | - | - |")
            continue
        saved = r["eager"] - r["compiled"]
        even = f"{1000 * r['compile_s'] / saved:,.0f}" if saved > 0 else "never (slower)"
        lines.append(
            f"| {name} | {r['eager']:.1f} | {r['compiled']:.1f} | {r['compiled'] / r['eager']:.2f}x | "
            f"{r['compile_s']:.1f} | {even} |"
        )
    body = (
        f"torch.compile (default mode, inductor, {torch.__version__}), 2 threads, glibc allocator as the trainer "
        f"sets it. {rounds} interleaved rounds after 3 warm-up calls each; medians. Compile time = the first 3 "
        "calls of the compiled version (tracing, code generation, C++ build), cold: a fresh inductor cache dir. Max |logit difference| of the "
        f"compiled teacher against eager: {parity}. Random inputs (timing only).\n\n"
        + "\n".join(lines)
        + "\n\nEnd to end through kdflow's trainer and cache builder (one process, eager first; compile time "
        f"included; {'5,000' if a.quick else 'all 55,000'} train samples, teacher `{a.teacher}`, student "
        f"`{a.student}`, seed 0):\n\n| teacher forward | online KD epoch, s | val acc after it | "
        "cache build, one view, s |\n|---|---|---|---|\n" + "\n".join(e2e)
    )
    write_section("CPU choice: torch.compile" + (" (quick)" if a.quick else ""), body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
