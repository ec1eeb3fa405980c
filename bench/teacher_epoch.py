"""One resnet20 teacher epoch, side by side: the hand-written loop of BENCH.md against kdflow's trainer.

    .venv/bin/python bench/teacher_epoch.py [--rounds 2]

Hand-written: torchvision FashionMNIST (60,000 images) + PIL crop/flip + DataLoader (0 workers),
channels_last fp32, SGD nesterov (bench/reference_kd.teacher_epoch). kdflow: its trainer on the prepared
55,000-image train split, with the teacher's defaults of configs/fashion_mnist.yaml and, for contrast, in
fp32 contiguous (the old default). Rounds interleave the arms (this machine drifts by the hour); each arm's
best epoch counts, and a per-image figure corrects for the 60,000 / 55,000 difference.
Writes the section "Pipeline cost: teacher epoch vs the hand-written loop" of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_kd  # noqa: E402
from results import write_section  # noqa: E402

from kdflow import steps  # noqa: E402
from kdflow.config import load_config  # noqa: E402
from kdflow.data import prepared as data  # noqa: E402
from kdflow.models import zoo as models  # noqa: E402
from kdflow.training.objective import SupervisedObjective  # noqa: E402
from kdflow.training.trainer import fit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def kdflow_epoch(cfg, prepared, work: Path, tag: str) -> float:
    torch.manual_seed(0)
    model = models.build_model("resnet20")
    fitted = fit(
        model,
        SupervisedObjective(),
        prepared,
        cfg.train_for("teacher"),
        epochs=1,
        lr=cfg.lr_for("teacher"),
        out_dir=work / tag,
        resume=False,
        desc=tag,
    )
    return fitted.history[0]["seconds"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="kdflow-bench-teacher-epoch-"))
    base = ["tracking.enabled=false", f"storage.state_dir={work / 'state'}", "train.num_threads=2"]
    default = load_config(ROOT / "configs" / "fashion_mnist.yaml", "full", base)
    old = load_config(
        ROOT / "configs" / "fashion_mnist.yaml", "full", base + ["teacher.amp=off", "teacher.channels_last=false"]
    )
    steps.prep(default, work / "data")
    prepared = data.load_prepared(work / "data")
    dl = reference_kd.loader(work / "tv", batch_size=128)
    n_hand, n_kdflow = len(dl.dataset), len(prepared.train)
    t = default.train_for("teacher")
    arms = {
        "hand-written (channels_last fp32, DataLoader)": lambda r: reference_kd.teacher_epoch(
            models.build_model("resnet20"), dl
        ),
        f"kdflow, teacher defaults (amp {t.amp}, channels_last {t.channels_last})": lambda r: kdflow_epoch(
            default, prepared, work, f"new{r}"
        ),
        "kdflow, fp32 contiguous (old default)": lambda r: kdflow_epoch(old, prepared, work, f"old{r}"),
    }
    images = {name: (n_hand if name.startswith("hand") else n_kdflow) for name in arms}
    seconds: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(a.rounds):
        for name, run in arms.items():
            seconds[name].append(run(r))
            print(f"round {r}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    hand = next(iter(arms))
    hand_per = min(seconds[hand]) / images[hand]
    lines = [
        "| arm | images | best epoch s | epochs s (all rounds) | per image vs hand-written |",
        "|---|---|---|---|---|",
    ]
    for name, ts in seconds.items():
        lines.append(
            f"| {name} | {images[name]:,} | {min(ts):.1f} | {', '.join(f'{x:.1f}' for x in ts)} "
            f"| {min(ts) / images[name] / hand_per:.2f}x |"
        )
    body = "\n".join(lines)
    print(body)
    write_section("Pipeline cost: teacher epoch vs the hand-written loop", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
