"""A language-model teacher into a tiny text classifier (issue #27): WordNet noun glosses -> supersense.

Per paired seed s (``data.split_seed=s``: which 1,000 of the 9,000 train glosses keep their labels, val, test;
``train.seed=s``), through kdflow's own steps, tracking off (configs/wordnet_supersense.yaml):
- teacher: the frozen all-MiniLM-L6-v2 encoder (its mean-pooled embedding computed once at prep) + a linear
  head on the 1,000 labels;
- the student (text-bag on WordPiece ids) four ways: scratch twin; self-training twin (the scratch twin labels
  the 8,000 unlabeled glosses); distilled on the labels only; distilled with the transfer set;
- the full-label rows: the same 9,000 glosses all labelled (no pool), scratch and distilled from a teacher
  whose head learned from all 9,000 labels too (does it pay?).
Also measured once: parameters and size, batch-1 CPU latency per sentence of the student and of the teacher
(encoder + head: what serving the teacher costs), the encoder's forward per example (the prep cache's cost)
and what an uncached distillation would spend on it.

    .venv/bin/python bench/text.py                 # seeds 0,1,2
    .venv/bin/python bench/text.py --seeds 0       # a look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402
from runs import isolated, seed_list  # noqa: E402

from kdflow import steps  # noqa: E402
from kdflow.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "text"
SECTION = "Text distillation: MiniLM teacher into a tiny text student (WordNet supersenses)"
ROWS = ("scratch", "selftrain", "distilled-labels", "distilled", "full-scratch", "full-distilled")


def config(seed: int, extra: list[str] | None = None):
    base = [
        *isolated(WORK),
        f"data.download_root={WORK / 'downloads'}",
        f"data.split_seed={seed}",
        f"train.seed={seed}",
        "gate.max_latency_p95_ms=1000",
    ]
    return load_config(ROOT / "configs" / "wordnet_supersense.yaml", None, base + (extra or []))


def _acc(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["test_accuracy"]


def _prep(seed: int, full: bool) -> Path:
    d = WORK / f"s{seed}" / ("data-full" if full else "data")
    if not (d / "manifest.json").is_file():
        t0 = time.perf_counter()
        steps.prep(config(seed, ["data.labels_kept=null"] if full else None), d, None)
        print(f"[text] prep seed {seed}{' full' if full else ''}: {time.perf_counter() - t0:.0f} s", flush=True)
    return d


def _train(row: str, seed: int, data: Path, full: Path, teacher: Path, out: Path, scratch: Path) -> None:
    if row == "scratch":
        steps.train(config(seed), "scratch", data, out)
    elif row == "selftrain":
        steps.self_train(config(seed), data, scratch / "model.pt", out)
    elif row == "distilled-labels":
        steps.distill(config(seed, ["distill.unlabeled=false"]), data, teacher / "model.pt", out)
    elif row == "distilled":
        steps.distill(config(seed), data, teacher / "model.pt", out)
    elif row == "full-scratch":
        steps.train(config(seed, ["data.labels_kept=null"]), "scratch", full, out)
    else:  # every label: the teacher's head trained on all of them too (the same encoder)
        full_teacher = out.parent / "teacher-full"
        if not (full_teacher / "model.pt").is_file():
            steps.train(config(seed, ["data.labels_kept=null"]), "teacher", full, full_teacher)
        steps.distill(config(seed, ["data.labels_kept=null"]), full, full_teacher / "model.pt", out)


def run(args) -> None:
    scores: dict[str, dict[int, float]] = {}
    for seed in args.seeds:
        data, full = _prep(seed, False), _prep(seed, True)
        teacher = WORK / f"s{seed}" / "teacher"
        if not (teacher / "model.pt").is_file():
            steps.train(config(seed), "teacher", data, teacher)
        scores.setdefault("teacher", {})[seed] = _acc(teacher)
        for row in ROWS:
            out = WORK / f"s{seed}" / row
            if not (out / "model.pt").is_file():
                t0 = time.perf_counter()
                _train(row, seed, data, full, teacher, out, WORK / f"s{seed}" / "scratch")
                print(f"[text] seed {seed} {row}: {time.perf_counter() - t0:.0f} s", flush=True)
            scores.setdefault(row, {})[seed] = _acc(out)
        scores.setdefault("teacher-full", {})[seed] = _acc(WORK / f"s{seed}" / "teacher-full")
        report(scores, data, costs(data, teacher, WORK / f"s{seed}" / "distilled"))


def _latency_ms(fn, x: torch.Tensor, repeats: int = 200) -> float:
    with torch.inference_mode():
        for _ in range(20):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def costs(data_dir: Path, teacher_dir: Path, student_dir: Path) -> dict:
    """Serving cost per sentence (batch 1, eager, this CPU) of the student and of the whole teacher, and the
    encoder's cost per example that the prep cache pays once."""
    from transformers import AutoModel

    from kdflow.data import prepared as data
    from kdflow.data.text import encoder_dir
    from kdflow.infra.checkpoints import load_model
    from kdflow.models.zoo import num_parameters, state_dict_bytes

    prepared = data.load_prepared(data_dir)
    student, _ = load_model(student_dir / "model.pt")
    head, _ = load_model(teacher_dir / "model.pt")
    encoder = AutoModel.from_pretrained(encoder_dir(), local_files_only=True).eval()
    norm = prepared.normalizer()
    rows = norm(prepared.test.x[:256])
    one = rows[:1]
    tokens = one[:, : 2 * prepared.manifest["inputs"]["tokens"]["shape"][1]].reshape(1, 2, -1)

    def teacher_forward(x: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0].long(), tokens[:, 1].long()
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1)
        return head.core(pooled)  # type: ignore[operator]  # the head on the embedding (normalisation aside)

    batch = prepared.test.x[:256]
    ids = batch[:, : batch.shape[1] - 384].reshape(len(batch), 2, -1)
    with torch.inference_mode():
        t0 = time.perf_counter()
        encoder(input_ids=ids[:, 0].long(), attention_mask=ids[:, 1].long())
        encoder_ms = 1000 * (time.perf_counter() - t0) / len(batch)
    counts = prepared.manifest["counts"]
    epochs = config(0).epochs_for("student")
    return {
        "student_params": num_parameters(student),
        "student_bytes": state_dict_bytes(student),
        "teacher_params": num_parameters(encoder) + num_parameters(head),
        "teacher_bytes": state_dict_bytes(encoder) + state_dict_bytes(head),
        "student_ms": _latency_ms(student, one),
        "teacher_ms": _latency_ms(teacher_forward, one),
        "encoder_ms_per_example": encoder_ms,
        "uncached_encoder_s": encoder_ms / 1000 * (counts["train"] + counts.get("unlabeled", 0)) * epochs,
        "cached_encoder_s": encoder_ms / 1000 * sum(counts.values()),
    }


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def report(scores: dict, data_dir: Path, cost: dict) -> None:
    seeds = sorted(set.intersection(*(set(v) for v in scores.values())))
    if not seeds:
        return
    pct = {r: [100 * scores[r][s] for s in seeds] for r in ("teacher", "teacher-full", *ROWS)}
    counts = json.loads((data_dir / "manifest.json").read_text())["counts"]

    def gain(a: str, b: str) -> str:
        return _ms([x - y for x, y in zip(pct[a], pct[b], strict=True)])

    lines = [
        f"WordNet 3.0 noun glosses (Debian wordnet-base), the 10 largest supersenses; per seed {counts['train']:,} "
        f"labelled train glosses + {counts.get('unlabeled', 0):,} unlabeled (the transfer set), val "
        f"{counts['val']:,}, release {counts['release']:,}, test {counts['test']:,} (drawn by the seed). Teacher: "
        f"the frozen all-MiniLM-L6-v2 encoder + a linear head on the {counts['train']:,} labels: test "
        f"{_ms(pct['teacher'])}%. Student text-bag (WordPiece ids, 32 tokens), {config(0).epochs_for('student')} "
        f"epochs, AdamW, KD T=4 alpha=0.1 (configs/wordnet_supersense.yaml). Test accuracy (%), final weights, "
        f"mean ± std over seeds {seeds}; gains paired by seed.",
        "",
        "| labels | scratch twin | self-training twin | distilled, labels only | distilled + transfer set | gain vs "
        "scratch (pt) | gain vs self-training (pt) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| {counts['train']:,} + {counts.get('unlabeled', 0):,} unlabeled | {_ms(pct['scratch'])} | "
        f"{_ms(pct['selftrain'])} | {_ms(pct['distilled-labels'])} | {_ms(pct['distilled'])} | "
        f"{gain('distilled', 'scratch')} | {gain('distilled', 'selftrain')} |",
        f"| all {counts['train'] + counts.get('unlabeled', 0):,} labelled, no pool (teacher's head on them too: "
        f"{_ms(pct['teacher-full'])}%) | {_ms(pct['full-scratch'])} | - | {_ms(pct['full-distilled'])} | - | "
        f"{gain('full-distilled', 'full-scratch')} | - |",
        "",
        f"Serving, batch 1, eager PyTorch on this CPU (median of 200): student {cost['student_params']:,} parameters, "
        f"{cost['student_bytes'] / 1e6:.1f} MB, {cost['student_ms']:.3f} ms per sentence; teacher (encoder + head) "
        f"{cost['teacher_params']:,} parameters, {cost['teacher_bytes'] / 1e6:.1f} MB, {cost['teacher_ms']:.2f} ms: "
        f"the student is {cost['teacher_ms'] / cost['student_ms']:.0f}x faster. The encoder's forward costs "
        f"{cost['encoder_ms_per_example']:.2f} ms per example (batch 256): prep pays it once for every kept gloss "
        f"(~{cost['cached_encoder_s']:.0f} s); a distillation that ran the encoder "
        f"live would pay ~{cost['uncached_encoder_s']:.0f} s over its epochs.",
    ]
    write_section(SECTION, "\n".join(lines))
    print("\n".join(lines), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    run(p.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
