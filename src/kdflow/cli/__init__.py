"""The ``kdflow`` command: one sub-command per pipeline step, plus predict.

User errors print one line (``kdflow: error: FIELD: PROBLEM; fix: FIX``) and exit 2, without traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kdflow.cli.parser import DEFAULT_CONFIG, _relaunch_under_torchrun, build_parser
from kdflow.errors import ConfigError, KdflowError


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
    from kdflow.evaluation.report import render_table, robust_settings, summary_rows

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
    from kdflow.evaluation.gate import verdict

    report = steps.export_student(cfg, args.data, args.student, args.evaluation, args.out, ctx)
    for form, r in report["forms"].items():
        print(
            f"{form}: accuracy {r['accuracy']:.4f}, max|diff| {r['max_abs_diff']:.2e}, "
            f"p50 {r['latency_p50_ms']:.3f} ms, {r['size_bytes']:,} bytes"
        )
    if not report["gate"]["passed"]:
        print(f"gate: {verdict(report['gate'])}", file=sys.stderr)


def _attack(cfg, args, ctx) -> None:
    from kdflow.evaluation.robustness import attack_cli

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
    "train-teacher": lambda cfg, a, ctx: _steps().provide_teacher(
        cfg, a.data, a.out, ctx, a.fresh
    ),  # or teacher.source
    "train-student": lambda cfg, a, ctx: _steps().train(cfg, "scratch", a.data, a.out, ctx, a.fresh),
    "distill": _distill,
    "run": _run_all,
    "tune": _tune,
    "train-baselines": lambda cfg, a, ctx: _steps().train_transfer_baselines(
        cfg, a.data, a.teacher, a.scratch, a.out, ctx, a.fresh
    ),
    "evaluate": lambda cfg, a, ctx: _print_eval(
        _steps().evaluate_models(cfg, a.data, a.teacher, a.scratch, a.student, a.out, ctx, a.baselines)
    ),
    "export": _export,
    "attack": _attack,
    "store": lambda cfg, a, ctx: _store(cfg, a),
    "promote": lambda cfg, a, ctx: _steps().promote(cfg, a.data, a.student, a.export, a.out, ctx, a.force),
}


def _store(cfg, args) -> None:
    from kdflow.cli.store import store_command

    store_command(cfg, args.action, args.max_gb, args.purge_quarantine, args.purge_running)


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
        from kdflow.release.predict import predict_cli

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
        from kdflow.infra.step_manifest import withdraw_open_claims

        withdraw_open_claims()  # a refused step leaves no directory and no manifest behind
        print(f"kdflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdflow: interrupted", file=sys.stderr)
        return 130
