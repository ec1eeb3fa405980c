"""A fine-tuned language model into a tiny Transformer, with TinyBERT-style terms (issue #27).

Per paired seed s, through kdflow's own steps, tracking off (configs/wordnet_minilm.yaml; the data are
bench/text.py's preps of the same seed, read only): WordNet noun glosses -> the 10 largest supersenses, 1,000
labels + 8,000 unlabeled glosses (the transfer set).
- teacher: all-MiniLM-L6-v2 with its top 2 of 6 layers fine-tuned (arch minilm, reads the WordPiece ids),
  beside bench/text.py's frozen encoder + linear head;
- the student text-transformer (2 layers, width 64) three ways: scratch twin (the labels); distilled on the
  teacher's logits with the transfer set (the logit cache: one teacher pass); distilled with the transfer set
  and the TinyBERT-style terms (hidden states of layers 1, 2 -> teacher layers 3, 6 through learned
  projections, the last layer's attention distributions), teacher live.

    .venv/bin/python bench/text_minilm.py --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402
from runs import isolated, seed_list  # noqa: E402

from kdflow import steps  # noqa: E402
from kdflow.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "text-minilm"
DATA = ROOT / "bench" / "_work" / "text"  # bench/text.py's preps and frozen-view teachers
SECTION = "Fine-tuned MiniLM teacher and TinyBERT-style terms (WordNet supersenses)"
ROWS = ("scratch", "kd", "kd+tinybert")


def config(seed: int, extra: list[str] | None = None):
    base = [*isolated(WORK), f"data.split_seed={seed}", f"train.seed={seed}", "gate.max_latency_p95_ms=1000"]
    return load_config(ROOT / "configs" / "wordnet_minilm.yaml", None, base + (extra or []))


def _acc(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["test_accuracy"]


def _data(seed: int) -> Path:
    d = DATA / f"s{seed}" / "data"
    if not (d / "manifest.json").is_file():
        steps.prep(config(seed), d, None)
    return d


def _train(row: str, seed: int, data: Path, teacher: Path, out: Path) -> None:
    if row == "scratch":
        steps.train(config(seed), "scratch", data, out)
    elif row == "kd":
        steps.distill(config(seed, ["distill.features=[]", "distill.cache=true"]), data, teacher / "model.pt", out)
    else:
        steps.distill(config(seed), data, teacher / "model.pt", out)


def run(args) -> None:
    scores: dict[str, dict[int, float]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in args.seeds:
        data = _data(seed)
        teacher = WORK / f"s{seed}" / "teacher"
        rows = {"teacher": teacher, **{r: WORK / f"s{seed}" / r for r in ROWS}}
        for row, out in rows.items():
            if not (out / "model.pt").is_file():
                t0 = time.perf_counter()
                if row == "teacher":
                    steps.train(config(seed), "teacher", data, out)
                else:
                    _train(row, seed, data, teacher, out)
                seconds.setdefault(row, []).append(time.perf_counter() - t0)
                print(f"[text-minilm] seed {seed} {row}: {seconds[row][-1]:.0f} s", flush=True)
            scores.setdefault(row, {})[seed] = _acc(out)
        frozen = DATA / f"s{seed}" / "teacher"
        if (frozen / "metrics.json").is_file():
            scores.setdefault("frozen-teacher", {})[seed] = _acc(frozen)
        report(scores, seconds, data)


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def report(scores: dict, seconds: dict, data_dir: Path) -> None:
    seeds = sorted(set.intersection(*(set(scores[r]) for r in ("teacher", *ROWS))))
    if not seeds:
        return
    pct = {r: [100 * scores[r][s] for s in seeds] for r in scores if all(s in scores[r] for s in seeds)}
    counts = json.loads((data_dir / "manifest.json").read_text())["counts"]

    def gain(a: str, b: str) -> str:
        return _ms([x - y for x, y in zip(pct[a], pct[b], strict=True)])

    took = ", ".join(f"{r} {statistics.mean(v):.0f} s" for r, v in seconds.items())
    frozen = f"{_ms(pct['frozen-teacher'])}%" if "frozen-teacher" in pct else "not measured"
    cfg = config(0)
    lines = [
        f"WordNet noun glosses, 10 supersenses; per seed {counts['train']:,} labelled + "
        f"{counts.get('unlabeled', 0):,} unlabeled train glosses, val {counts['val']:,}, test {counts['test']:,} "
        f"(bench/text.py's preps). Teacher: all-MiniLM-L6-v2 + head, top {cfg.teacher.finetune_layers} of 6 "
        f"layers fine-tuned {cfg.epochs_for('teacher')} epochs on the labels (backbone lr x"
        f"{cfg.teacher.backbone_lr_mult}): test {_ms(pct['teacher'])}% (the frozen encoder + linear head of "
        f"bench/text.py: {frozen}). Student text-transformer (2 layers, width 64, 4 heads, "
        f"{cfg.epochs_for('student')} epochs, AdamW, KD T=4 alpha=0.1; configs/wordnet_minilm.yaml). Test "
        f"accuracy (%), final weights, mean ± std over seeds {seeds}; gains paired by seed.",
        "",
        "| scratch twin (labels) | KD, transfer set (logit cache) | KD + TinyBERT-style terms, transfer set "
        "(teacher live) | KD vs scratch (pt) | + TinyBERT terms vs KD (pt) |",
        "|---:|---:|---:|---:|---:|",
        f"| {_ms(pct['scratch'])} | {_ms(pct['kd'])} | {_ms(pct['kd+tinybert'])} | {gain('kd', 'scratch')} | "
        f"{gain('kd+tinybert', 'kd')} |",
        "",
        f"Wall per run on this CPU (2 threads, mean over the runs made in this invocation): {took}.",
    ]
    write_section(SECTION, "\n".join(lines))
    print("\n".join(lines), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=seed_list, default=[0, 1])
    run(p.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
