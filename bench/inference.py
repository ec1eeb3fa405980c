"""Inference rows of bench/PROTOCOL.md: teacher fp32, student fp32, student ONNX fp32 / int8 / TorchScript.

Uses the trained models of a local pipeline run (default: the newest under local_outputs/, i.e. the
last `make run`): latency p50/p95 at batch 1, throughput at batch 256, parameters, file size and test
accuracy of each form, all measured in this one process with the same thread count.

    .venv/bin/python bench/inference.py [--run local_outputs/kdflow-distillation-...] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

from kdflow.config import EvaluateConfig  # noqa: E402
from kdflow.data import prepared as data  # noqa: E402
from kdflow.evaluation.metrics import speed_profile  # noqa: E402
from kdflow.infra import checkpoints  # noqa: E402
from kdflow.models.zoo import num_parameters  # noqa: E402
from kdflow.release.export import logits_over, onnx_runner, onnx_session, torchscript_runner  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="pipeline run directory (default: newest local_outputs/kdflow-distillation-*)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=300)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    runs = sorted(Path("local_outputs").glob("kdflow-distillation-*"))
    run = Path(a.run) if a.run else (runs[-1] if runs else None)
    if run is None or not run.is_dir():
        print("no pipeline run found: run `make run` first or pass --run", file=sys.stderr)
        return 2
    d = data.load_prepared(next(run.glob("prep-data/dataset")))
    norm = data.Normalizer(d.mean, d.std)
    teacher_pt = next(run.glob("train-teacher/teacher/model.pt"))
    student_pt = next(run.glob("distill-student/student/model.pt"))
    exported = next(run.glob("export/exported"))
    teacher, tmeta = checkpoints.load_model(teacher_pt)
    student, smeta = checkpoints.load_model(student_pt)
    cfg = EvaluateConfig(latency_repeats=a.repeats, latency_warmup=20, throughput_repeats=20)
    shape = tuple(d.test.x.shape[1:])

    def eager(model):
        @torch.inference_mode()
        def run_batch(x):
            return model(x)

        return run_batch

    forms = [
        (f"teacher {tmeta['arch']} fp32 (PyTorch eager)", eager(teacher), teacher_pt, num_parameters(teacher)),
        (f"student {smeta['arch']} fp32 (PyTorch eager)", eager(student), student_pt, num_parameters(student)),
        (
            "student TorchScript",
            torchscript_runner(exported / "student.torchscript.pt"),
            exported / "student.torchscript.pt",
            num_parameters(student),
        ),
        (
            "student ONNX fp32 (onnxruntime)",
            onnx_runner(onnx_session(exported / "student.onnx", a.threads)),
            exported / "student.onnx",
            num_parameters(student),
        ),
        (
            "student ONNX int8 (onnxruntime)",
            onnx_runner(onnx_session(exported / "student.int8.onnx", a.threads)),
            exported / "student.int8.onnx",
            num_parameters(student),
        ),
    ]
    rows = [
        "| form | test accuracy | latency p50 b=1 (ms) | latency p95 b=1 (ms) | throughput b=256 (img/s) | parameters | file size (bytes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, fn, path, params in forms:
        acc = float((logits_over(fn, d.test, norm).argmax(1) == d.test.y).float().mean())
        sp = speed_profile(fn, shape, cfg)
        rows.append(
            f"| {name} | {100 * acc:.2f}% | {sp['latency_p50_ms']:.3f} | {sp['latency_p95_ms']:.3f} | "
            f"{sp['throughput_ips']:,.0f} | {params:,} | {Path(path).stat().st_size:,} |"
        )
        print(rows[-1], flush=True)
    body = (
        f"Models from `{run}` ({d.manifest['counts']['test']} test images). {a.threads} threads for torch and "
        f"onnxruntime; {a.repeats} timed batch-1 calls after 20 warm-up calls, 20 batch-256 calls.\n\n"
        + "\n".join(rows)
    )
    print(write_section("Inference: teacher vs student vs exported student", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
