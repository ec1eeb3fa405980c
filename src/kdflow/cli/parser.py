"""The ``kdflow`` command line: sub-commands, their flags, and the torchrun relaunch for --nproc."""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_CONFIG = "configs/fashion_mnist.yaml"


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument(
        "--config",
        default=None,
        help=f"experiment YAML (default: {DEFAULT_CONFIG} when it exists, else built-in defaults)",
    )
    p.add_argument(
        "--profile", default=None, help="profile inside the config: smoke, default or full (default: base values)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set distill.temperature=4 (repeatable)",
    )
    p.add_argument("--run-id", default="local", help="pipeline run id recorded in MLflow tags (default: local)")
    if out:
        p.add_argument(
            "--out", required=True, help="output directory of this step (created; outputs written atomically)"
        )


def _nproc(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=_at_least_one("--nproc 2"),
        default=1,
        help="train with N processes (torch DDP under torchrun; gloo on CPU, NCCL on CUDA). "
        "train.batch_size stays the global batch; the LR is not rescaled",
    )


def _fresh(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fresh",
        action="store_true",
        help="replace what OUT holds (an earlier run's checkpoint and outputs, snapshots included) instead of "
        "resuming or rerunning it; OUT holding another step, config, data or teacher is refused without this flag",
    )


def _relaunch_under_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run this same command as N torchrun workers on this machine."""
    import subprocess
    import tempfile

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "kdflow.cli",
        *rest,
    ]
    # torchrun makes a log folder (torchelastic_*) in TMPDIR per launch and never removes it
    with tempfile.TemporaryDirectory(prefix="kdflow-torchrun-") as scratch:
        return subprocess.call(cmd, env={**os.environ, "TMPDIR": scratch})


def _at_least_one(example: str):
    """An argparse type for a whole number >= 1 whose errors show ``example`` (e.g. '--trials 20')."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number; fix: pass e.g. {example}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1 (got {value}); fix: pass e.g. {example}")
        return value

    return parse


def _positive(unit: str, example: str):
    """An argparse type for a finite number > 0 (of ``unit``) whose errors show ``example``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number of {unit}; fix: pass e.g. {example}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number of {unit} (got {text}); fix: e.g. {example}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdflow", description="Knowledge distillation steps (teacher -> student).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prep", help="resolve, split and preload the dataset")
    _common(p)

    p = sub.add_parser(
        "train-teacher", help="train the teacher on a prepared dataset, or take teacher.source (a checkpoint or .onnx)"
    )
    _common(p)
    _fresh(p)
    _nproc(p)
    p.add_argument("--data", required=True, help="output directory of `kdflow prep`")

    p = sub.add_parser("train-student", help="train the student from scratch (the baseline for the transfer rate)")
    _common(p)
    _fresh(p)
    _nproc(p)
    p.add_argument("--data", required=True, help="output directory of `kdflow prep`")

    p = sub.add_parser("distill", help="distil the teacher into the student (the distill step; writes OUT/model.pt)")
    _common(p)
    _fresh(p)
    _nproc(p)
    p.add_argument("--data", help="output directory of `kdflow prep` (without it: every step, as `kdflow run`)")
    p.add_argument(
        "--teacher", help="teacher checkpoint (model.pt) or .onnx file, s3:// or models:/ URI (default: teacher.source)"
    )
    p.add_argument("--scratch", action="store_true", help=argparse.SUPPRESS)  # the all-in-one form, kept working

    p = sub.add_parser(
        "train-baselines",
        help="the transfer set's baselines: the self-training twin (the scratch twin labels the unlabeled pool) and "
        "the labels-only distilled student, when the run uses a transfer set",
    )
    _common(p)
    _fresh(p)
    p.add_argument("--data", required=True, help="output directory of `kdflow prep`")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (model.pt), s3:// or models:/ URI")
    p.add_argument("--scratch", required=True, help="output directory of train-student")

    p = sub.add_parser("run", help="every step in one command: prep, teacher, (scratch), distill, evaluate")
    _common(p)
    _fresh(p)
    p.add_argument("--data", help="output directory of `kdflow prep` (default: prepare into OUT/data)")
    p.add_argument(
        "--teacher",
        help="teacher checkpoint or .onnx file, s3:// or models:/ URI (default: teacher.source, else train one into OUT/teacher)",
    )
    p.add_argument("--scratch", action="store_true", help="also train the scratch baseline and compare")

    p = sub.add_parser(
        "tune",
        help="automated distillation: search students and recipes under a budget (Optuna), "
        "tune the pick's scratch twin the same way, write the Pareto front and best.yaml",
    )
    _common(p)
    p.add_argument(
        "--trials", type=_at_least_one("--trials 20"), help="trials of the distillation study (default: tune.trials)"
    )
    p.add_argument(
        "--timeout",
        type=_positive("seconds", "--timeout 600"),
        help="stop starting distillation trials after SECONDS (tune.timeout_s)",
    )

    p = sub.add_parser("evaluate", help="compare teacher, scratch and distilled student on the test split")
    _common(p)
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True, help="output directory of train-teacher (holds model.pt)")
    p.add_argument("--student", required=True, help="output directory of distill")
    p.add_argument("--scratch", help="output directory of train-student")
    p.add_argument("--baselines", help="output directory of train-baselines (self-training twin, labels-only rows)")

    p = sub.add_parser("export", help="export the student to ONNX, int8 ONNX and TorchScript and verify them")
    _common(p)
    p.add_argument("--data", required=True)
    p.add_argument("--student", required=True, help="output directory of distill")
    p.add_argument("--evaluation", help="output directory of evaluate (adds the quality gate and the report)")

    p = sub.add_parser("promote", help="register the student as challenger and promote it if it beats the champion")
    _common(p)
    p.add_argument("--data", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--export", required=True)
    p.add_argument(
        "--force",
        action="store_true",
        help="promote even though the recorded gate failed or is missing (tagged kdflow.forced on the "
        "version and the run); the challenger must still beat the champion",
    )

    p = sub.add_parser(
        "attack",
        help="robust accuracy of one model under FGSM and PGD (adversarial.eps, .steps) and its robustness curve",
    )
    _common(p)
    p.add_argument("--data", required=True, help="output directory of `kdflow prep`")
    p.add_argument(
        "--model", required=True, help="a step's model.pt or a .torchscript.pt export (ONNX has no gradients)"
    )

    p = sub.add_parser(
        "store", help="the reuse store (<storage.state_dir>/trained): ls its entries, gc to its size cap"
    )
    _common(p, out=False)
    p.add_argument("action", choices=["ls", "gc"])
    p.add_argument(
        "--max-gb", type=_positive("GB", "--max-gb 20"), help="gc: the size cap (default storage.reuse_max_gb)"
    )
    p.add_argument("--purge-quarantine", action="store_true", help="gc: also delete quarantined (damaged) entries")
    p.add_argument(
        "--purge-running",
        action="store_true",
        help="gc: also delete the checkpoints unfinished steps keep (storage.carry_checkpoint); none may be running",
    )

    p = sub.add_parser("predict", help="classify images with an exported model (ONNX, TorchScript or models:/ URI)")
    p.add_argument("--model", required=True, help="path of a .onnx / .torchscript.pt export, or models:/NAME@ALIAS")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG) of the model's input size")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    return parser
