"""The ``kdflow`` command: one sub-command per pipeline step, plus predict.

User errors print one line (``kdflow: error: FIELD: PROBLEM; fix: FIX``) and exit 2, without traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kdflow.errors import ConfigError, KdflowError

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
        type=int,
        default=1,
        help="train with N processes (torch DDP under torchrun; gloo on CPU, NCCL on CUDA). "
        "train.batch_size stays the global batch; the LR is not rescaled",
    )


def _fresh(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fresh",
        action="store_true",
        help="discard a checkpoint left in OUT by an earlier run instead of resuming it (a checkpoint of "
        "another config, data or teacher is refused without this flag)",
    )


def _relaunch_under_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run this same command as N torchrun workers on this machine."""
    import subprocess

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
    return subprocess.call(cmd)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number; fix: pass e.g. --trials 20") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value}); fix: pass e.g. --trials 20")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds; fix: pass e.g. --timeout 600") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text}); fix: e.g. --timeout 600")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdflow", description="Knowledge distillation steps (teacher -> student).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prep", help="resolve, split and preload the dataset")
    _common(p)

    p = sub.add_parser("train-teacher", help="train the teacher on a prepared dataset")
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
    p.add_argument("--teacher", help="teacher checkpoint (model.pt), s3:// or models:/ URI (default: teacher.source)")
    p.add_argument("--scratch", action="store_true", help=argparse.SUPPRESS)  # the all-in-one form, kept working

    p = sub.add_parser("run", help="every step in one command: prep, teacher, (scratch), distill, evaluate")
    _common(p)
    _fresh(p)
    p.add_argument("--data", help="output directory of `kdflow prep` (default: prepare into OUT/data)")
    p.add_argument(
        "--teacher",
        help="teacher checkpoint, s3:// or models:/ URI (default: teacher.source, else train one into OUT/teacher)",
    )
    p.add_argument("--scratch", action="store_true", help="also train the scratch baseline and compare")

    p = sub.add_parser(
        "tune",
        help="automated distillation: search students and recipes under a budget (Optuna), "
        "tune the pick's scratch twin the same way, write the Pareto front and best.yaml",
    )
    _common(p)
    p.add_argument("--trials", type=_positive_int, help="trials of the distillation study (default: tune.trials)")
    p.add_argument(
        "--timeout", type=_positive_float, help="stop starting distillation trials after SECONDS (tune.timeout_s)"
    )

    p = sub.add_parser("evaluate", help="compare teacher, scratch and distilled student on the test split")
    _common(p)
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True, help="output directory of train-teacher (holds model.pt)")
    p.add_argument("--student", required=True, help="output directory of distill")
    p.add_argument("--scratch", help="output directory of train-student")

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

    p = sub.add_parser("predict", help="classify images with an exported model (ONNX, TorchScript or models:/ URI)")
    p.add_argument("--model", required=True, help="path of a .onnx / .torchscript.pt export, or models:/NAME@ALIAS")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG) of the model's input size")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    return parser


def _config(args):
    from kdflow.config import load_config

    path = args.config if args.config else (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    overrides = list(args.overrides)
    if getattr(args, "trials", None) is not None:
        overrides.append(f"tune.trials={args.trials}")
    if getattr(args, "timeout", None) is not None:
        overrides.append(f"tune.timeout_s={args.timeout}")
    return load_config(path, args.profile, overrides)


def _print_eval(summary: dict) -> None:
    from kdflow.report import render_table, robust_settings, summary_rows

    print(render_table(summary_rows(summary), robust_settings(summary)))
    if summary.get("robust_gain") is not None:
        print(f"robust gain over scratch {100 * summary['robust_gain']:+.2f} pt (PGD, test subset)")
    if summary.get("transfer_rate") is not None:
        print(f"transfer rate {summary['transfer_rate']:.3f}; KD gain {100 * summary['kd_gain']:+.2f} pt (test)")
    if summary.get("kd_verdict"):
        print(summary["kd_verdict"])


def _run_all(cfg, args, ctx) -> None:
    from kdflow import steps

    summary = steps.run_all(
        cfg,
        args.out,
        ctx,
        args.data,
        args.teacher or cfg.teacher.source,
        args.scratch or cfg.has_scratch_twin,
        args.fresh,
    )
    if summary is not None:
        _print_eval(summary)


def _distill(cfg, args, ctx) -> None:
    from kdflow import steps

    if not args.data or args.scratch:  # the all-in-one form of earlier releases: the same as `kdflow run`
        print(
            "kdflow: note: `kdflow distill` without --data (or with --scratch) runs every step; "
            "`kdflow run` is that command",
            file=sys.stderr,
        )
        return _run_all(cfg, args, ctx)
    teacher = args.teacher or cfg.teacher.source
    if not teacher:
        raise ConfigError(
            "--teacher",
            "the distill step needs a teacher",
            "pass --teacher runs/teacher/model.pt (or set teacher.source), or train one with `kdflow run`",
        )
    steps.distill(cfg, args.data, teacher, args.out, ctx, args.fresh)


def _tune(cfg, args, ctx) -> None:
    from kdflow.tune import tune

    tune(cfg, args.out)


def _export(cfg, args, ctx) -> None:
    from kdflow import steps
    from kdflow.gate import verdict

    report = steps.export_student(cfg, args.data, args.student, args.evaluation, args.out, ctx)
    for form, r in report["forms"].items():
        print(
            f"{form}: accuracy {r['accuracy']:.4f}, max|diff| {r['max_abs_diff']:.2e}, "
            f"p50 {r['latency_p50_ms']:.3f} ms, {r['size_bytes']:,} bytes"
        )
    if not report["gate"]["passed"]:
        print(f"gate: {verdict(report['gate'])}", file=sys.stderr)


def _attack(cfg, args, ctx) -> None:
    from kdflow.robustness import attack_cli

    r = attack_cli(cfg.adversarial, args.data, args.model, Path(args.out))
    print(
        f"{args.model}: FGSM {100 * r['fgsm_accuracy']:.2f}%, PGD-{r['robust_steps']} {100 * r['pgd_accuracy']:.2f}% "
        f"at eps {r['robust_eps']:g} on {r['robust_samples']} test images; curve: "
        + ", ".join(f"{c['eps']:g}: {100 * c['pgd_accuracy']:.1f}%" for c in r["robustness_curve"])
    )


COMMANDS = {
    "prep": lambda cfg, a, ctx: print(
        json.dumps({k: v for k, v in _steps().prep(cfg, a.out, ctx).items() if k in ("digest", "counts")})
    ),
    "train-teacher": lambda cfg, a, ctx: _steps().train(cfg, "teacher", a.data, a.out, ctx, a.fresh),
    "train-student": lambda cfg, a, ctx: _steps().train(cfg, "scratch", a.data, a.out, ctx, a.fresh),
    "distill": _distill,
    "run": _run_all,
    "tune": _tune,
    "evaluate": lambda cfg, a, ctx: _print_eval(
        _steps().evaluate_models(cfg, a.data, a.teacher, a.scratch, a.student, a.out, ctx)
    ),
    "export": _export,
    "attack": _attack,
    "promote": lambda cfg, a, ctx: _steps().promote(cfg, a.data, a.student, a.export, a.out, ctx, a.force),
}


def _steps():
    from kdflow import steps

    return steps


def run(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw_argv)
    if getattr(args, "nproc", 1) > 1 and "WORLD_SIZE" not in os.environ:
        _config(args)  # validate before spawning workers
        return _relaunch_under_torchrun(raw_argv, args.nproc)
    if args.command == "predict":
        from kdflow.predict import predict_cli

        return predict_cli(args.model, args.images, as_json=args.json)
    from kdflow import steps

    cfg = _config(args)
    COMMANDS[args.command](cfg, args, steps.RunContext(pipeline_run_id=args.run_id))
    return 0


def _quiet_libraries() -> None:
    """MLflow's INFO lines (creating tables, migrations) are not the user's business; MLFLOW_LOGGING_LEVEL wins."""
    import logging

    level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(level)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    try:
        return run(argv)
    except KdflowError as e:
        print(f"kdflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
