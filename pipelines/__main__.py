"""Entry points: compile the IR YAML, run the DAG locally, submit or schedule it on a KFP server.

python -m pipelines compile [--pipeline distillation|autodistill] [--out FILE] [--gpu] [--rounds R --parallel P]
                         [--final-top-k K]
python -m pipelines run --local [--runner subprocess|container] [--pipeline autodistill] [--profile default]
                     [--config configs/multiview_digits.yaml] [--root local_outputs] [--set k=v ...]
python -m pipelines submit --host URL [--profile default]
python -m pipelines schedule --host URL --cron "0 0 3 * * *" [--data-window ...]
"""

from __future__ import annotations

import argparse
import sys

from kdflow.errors import KdflowError


def _shape(args) -> dict:
    given = (("rounds", args.rounds), ("parallel", args.parallel), ("final_top_k", args.final_top_k))
    return {k: v for k, v in given if v is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="write the KFP IR YAML")
    c.add_argument("--out", default=None, help="default: pipelines/kdflow_<pipeline>.yaml")
    c.add_argument("--gpu", action="store_true", help="request one nvidia.com/gpu on training steps")
    for p in (c, r := sub.add_parser("run", help="run the whole DAG")):
        p.add_argument(
            "--pipeline",
            choices=["distillation", "autodistill"],
            default="distillation",
            help="autodistill: tune (Optuna ask/tell rounds, parallel trial pods) -> the pick -> gate -> promote",
        )
        p.add_argument("--rounds", type=int, default=None, help="autodistill: ask/tell rounds per study")
        p.add_argument("--parallel", type=int, default=None, help="autodistill: trials per round (pods in parallel)")
        p.add_argument(
            "--final-top-k",
            type=int,
            default=None,
            help="autodistill: a final rung retraining each study's K best at full length (compile: default 0; "
            "run: the config's tune.final.top_k); must equal tune.final.top_k",
        )
    r.add_argument("--local", action="store_true", required=True, help="run on this machine with KFP's local runner")
    r.add_argument(
        "--runner",
        choices=["subprocess", "container"],
        default="subprocess",
        help="subprocess: each step a process of this venv; container: each step in the component image "
        "(kfp.local.DockerRunner on podman; `make image` first)",
    )
    r.add_argument(
        "--cold",
        action="store_true",
        help="subprocess runner: start every step in a fresh interpreter (default: each step forked from a warm "
        "worker that imported torch, mlflow and kdflow once; KDFLOW_WARM=0 does the same as --cold)",
    )
    r.add_argument("--profile", default="default")
    r.add_argument(
        "--config", default=None, help="experiment YAML embedded in the run (default configs/fashion_mnist.yaml)"
    )
    r.add_argument("--root", default="local_outputs", help="local pipeline root")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--data-window", default="")
    r.add_argument(
        "--teacher-source", default="", help="checkpoint or .onnx path, s3:// or models:/ URI; skips teacher training"
    )
    for p in (
        sub.add_parser("submit", help="create a one-off run on a KFP server"),
        sub.add_parser("schedule", help="create a recurring run on a KFP server"),
    ):
        p.add_argument("--host", required=True)
        p.add_argument("--profile", default="default")
        p.add_argument("--experiment", default="kdflow")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--data-window", default="")
        if p.prog.endswith("schedule"):
            p.add_argument("--cron", required=True, help="6-field cron, seconds first, e.g. '0 0 3 * * *'")
            p.add_argument("--name", default="kdflow-retrain")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "compile":
            from pipelines.runner import compile_pipeline

            out = args.out or f"pipelines/kdflow_{args.pipeline}.yaml"
            print(compile_pipeline(out, use_gpu=args.gpu, which=args.pipeline, **_shape(args)))
        elif args.cmd == "run":
            from pipelines.runner import run_local

            run_local(
                profile=args.profile,
                root=args.root,
                overrides=args.overrides,
                data_window=args.data_window,
                teacher_source=args.teacher_source,
                which=args.pipeline,
                runner=args.runner,
                warm=not args.cold,
                config=args.config,
                **_shape(args),
            )
        elif args.cmd == "submit":
            from pipelines.runner import submit

            print(submit(args.host, args.profile, args.overrides, args.data_window, args.experiment))
        elif args.cmd == "schedule":
            from pipelines.runner import schedule

            print(
                schedule(
                    args.host, args.cron, args.name, args.profile, args.overrides, args.data_window, args.experiment
                )
            )
    except KdflowError as e:
        print(f"kdflow: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
