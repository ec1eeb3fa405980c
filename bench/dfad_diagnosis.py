"""Why a data-free student falls short: does the generator match the teacher's BN statistics, and which classes
does the student miss?

For a finished data-free run (a step directory with generator.pt and model.pt) and the teacher it learnt from:
the distance of a generated batch's per-channel mean and variance to the teacher's BN running statistics at
every BN layer (DFAD's BN term, the generator in training mode as in the min-max), beside the same distance
for a real training batch of the same size (the floor: sampling noise and the running averages); then the
student's recall and share of predictions per class on the validation split. Reads no test image.

    .venv/bin/python bench/dfad_diagnosis.py --run bench/_work/full/tune/under-100k-rung/dfad-seed0 \\
        --teacher bench/_work/full/teacher/model.pt --data bench/_work/full/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

from kdflow.config.adversarial import GeneratorConfig  # noqa: E402
from kdflow.data import prepared as data  # noqa: E402
from kdflow.evaluation.metrics import predict_logits  # noqa: E402
from kdflow.infra.io import safe_torch_load  # noqa: E402
from kdflow.steps.evaluation import load_step_model  # noqa: E402
from kdflow.steps.train import load_teacher  # noqa: E402
from kdflow.training.data_free import BatchNormStatistics, Generator  # noqa: E402

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def per_layer(teacher: nn.Module, x: torch.Tensor) -> list[float]:
    """DFAD's BN term at each BN layer of the teacher for one batch (normalised images)."""
    bn = BatchNormStatistics(teacher)
    with torch.no_grad():
        teacher(x)
    terms = [float(t) for t in bn.terms]
    bn.remove()
    return terms


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a data-free distill step's directory")
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--section", default="Data-free diagnosis: under-100k-rung seed 0")
    a = p.parse_args()
    torch.manual_seed(0)
    prepared = data.load_prepared(Path(a.data))
    teacher, _ = load_teacher(a.teacher, prepared.num_classes, input_shape=prepared.input_shape)
    teacher.eval()
    blob = safe_torch_load(Path(a.run) / "generator.pt", "--run")
    g = GeneratorConfig(**{k: v for k, v in blob["config"].items() if k in GeneratorConfig.model_fields})
    generator = Generator(g.latent, g.width, blob["channels"], blob["image_size"])
    generator.load_state_dict(blob["state_dict"])
    generator.train()  # as in the min-max: its own batch statistics
    mean = torch.tensor(prepared.mean).view(1, -1, 1, 1)
    std = torch.tensor(prepared.std).view(1, -1, 1, 1)
    with torch.no_grad():
        fake = (generator(torch.randn(a.batch, g.latent, generator=torch.Generator().manual_seed(0))) - mean) / std
    real = prepared.normalizer()(prepared.train.x[: a.batch])
    gen_terms, real_terms = per_layer(teacher, fake), per_layer(teacher, real)
    student = load_step_model(Path(a.run), prepared.num_classes, "student")
    pred = predict_logits(student, prepared.val, prepared.normalizer()).argmax(1)
    y = prepared.val.y
    names = CLASSES if prepared.num_classes == len(CLASSES) else [str(c) for c in range(prepared.num_classes)]
    body = [
        f"Run `{a.run}` (teacher `{a.teacher}`): DFAD's BN term (distance of a batch's per-channel mean and "
        f"variance to the teacher's running statistics) summed over the teacher's {len(gen_terms)} BN layers, for a "
        f"generated batch of {a.batch} and for a real training batch of {a.batch} (the floor).",
        "",
        "| batch | BN distance (sum) | largest layer term |",
        "|---|---|---|",
        f"| generated | {sum(gen_terms):.2f} | {max(gen_terms):.3f} (layer {gen_terms.index(max(gen_terms))}) |",
        f"| real | {sum(real_terms):.2f} | {max(real_terms):.3f} (layer {real_terms.index(max(real_terms))}) |",
        "",
        f"The student on the validation split ({100 * float((pred == y).float().mean()):.2f}%), per class:",
        "",
        "| class | recall | share of predictions |",
        "|---|---|---|",
        *(
            f"| {names[c]} | {100 * float((pred[y == c] == c).float().mean()):.1f}% | "
            f"{100 * float((pred == c).float().mean()):.1f}% |"
            for c in range(prepared.num_classes)
        ),
    ]
    write_section(a.section, "\n".join(body))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
