"""bench/tune.py's command line (see its docstring for what each study measures)."""

from __future__ import annotations

import argparse


def parse_args(doc: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", help="tune this config profile as is (its data, budget and space) into --out")
    p.add_argument("--out", help="with --profile: the study directory (default local_outputs/tune)")
    p.add_argument("--work", default="bench/_work/full")
    p.add_argument("--name", default="under-100k")
    p.add_argument("--students", default="cnn")
    p.add_argument("--max-params", type=int, default=100_000)
    p.add_argument("--mix", default="none")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--startup", type=int, default=4)
    p.add_argument("--subset", type=int, default=15_000, help="train samples the search sees (0 = all)")
    p.add_argument("--search-epochs", type=int, default=4)
    p.add_argument("--final-epochs", type=int, default=15)
    p.add_argument("--seeds", default="0")
    p.add_argument("--no-final", action="store_true", help="report the search only (no final training)")
    p.add_argument("--cache-views", type=int, default=0, help="teacher-cache views of the search (0 = one per epoch)")
    p.add_argument(
        "--final-as-searched",
        action="store_true",
        help="train the finals exactly as the search did (its subset and epochs), on --seeds, test reported",
    )
    p.add_argument("--final-views", type=int, default=0, help="teacher-cache views of the final run (0: one an epoch)")
    p.add_argument(
        "--final-top-k",
        type=int,
        default=0,
        help="the study's own final rung (tune.final.top_k): its k best trained again at --final-epochs on all data, "
        "the pick chosen there on validation",
    )
    p.add_argument(
        "--extra-teachers",
        type=int,
        default=0,
        help="learn from an ensemble: the protocol's teacher and N more resnet20s of its recipe (seeds 1..N, "
        "trained once by bench/ensemble_teacher.py's rule; distill.extra_teachers)",
    )
    p.add_argument("--no-augment", action="store_true", help="no crop or flip: the split prepared without (MLPs)")
    p.add_argument("--target-acc", type=float, help="the issue's target test accuracy (%%) of the pick, reported")
    p.add_argument("--target-gain", type=float, help="the issue's target KD gain on test (pt), reported")
    p.add_argument("--patient-epochs", type=int, default=0, help="then the pick and its twin at this many epochs")
    p.add_argument("--patient-seeds", default="0")
    p.add_argument(
        "--patient-mix",
        default="",
        choices=["", "mixup", "cutmix"],
        help="the patient pick also with function matching (train.mix: teacher and student see one mixed image), "
        "beside the same schedule without; its twin is the patient twin (its tuned recipe)",
    )
    p.add_argument("--dfad-seeds", default="", help="then the pick distilled data-free on these seeds")
    p.add_argument(
        "--dfad-confidence",
        type=float,
        default=0.0,
        help="data-free: distill.generator.confidence_weight (DAFL one-hot)",
    )
    p.add_argument("--dfad-ema", type=float, default=0.0, help="data-free: distill.generator.student_ema")
    p.add_argument(
        "--progress", action="store_true", help="train nothing: write the section from what the study has finished"
    )
    p.add_argument(
        "--augment",
        default="",
        help="search the train view too (tune.space.augment), e.g. true,false; finals on a split prepared with the pick's",
    )
    return p.parse_args()
