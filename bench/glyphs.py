"""A second real dataset at higher resolution (issue #26): letters A-J rendered from Debian's font packages.

notMNIST-style: every usable Latin font under /usr/share/fonts (the bench installs the packages below with
apt when fewer than 100 are found; nothing else is fetched) draws each letter several times on a canvas of
64-128 px (varying sizes, as photos vary), with its own glyph size, offset, small rotation and grey levels.
Fonts are split by family between train and test (a fifth of the families, by a hash of the name), so test
measures fonts never seen in training. Through kdflow's own steps (tracking off): ``data.dataset:
imagefolder`` at 64 px from a 72 px store with RandomResizedCrop (scale 0.5-1, no flip: letters are not
mirror-symmetric), a tv:resnet18 teacher trained from scratch, students tv:mobilenet_v3_small and cnn-small,
each distilled and as its scratch twin, the same seeds paired. Test accuracy once per final model.

    .venv/bin/python bench/glyphs.py                   # seeds 0,1,2
    .venv/bin/python bench/glyphs.py --seeds 0 --epochs 2 --teacher-epochs 2   # a look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402
from runs import isolated, seed_list  # noqa: E402

from kdflow import steps  # noqa: E402
from kdflow.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "glyphs"
SECTION = "Glyphs from Debian fonts (64 px, unseen fonts)"
LETTERS = "ABCDEFGHIJ"
FONT_PACKAGES = [
    "fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation", "fonts-freefont-ttf", "fonts-urw-base35",
    "fonts-texgyre", "fonts-crosextra-carlito", "fonts-crosextra-caladea", "fonts-lato", "fonts-cantarell",
    "fonts-noto-core", "fonts-adf-accanthis", "fonts-adf-baskervald", "fonts-adf-berenis", "fonts-adf-gillius",
    "fonts-adf-libris", "fonts-adf-romande", "fonts-adf-switzera", "fonts-adf-tribun", "fonts-adf-universalis",
    "fonts-adf-verana",
]  # fmt: skip
PER_FAMILY = 8
TEST_SHARE = 0.2  # families go to test in a hashed order until it holds this share of the fonts
NOT_LETTERS = ("symbol", "dingbat", "d050000l", "math", "emoji", "music")


def font_files() -> list[Path]:
    found = sorted(p for ext in ("*.ttf", "*.otf") for p in Path("/usr/share/fonts").rglob(ext))
    if len(found) < 100 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", *FONT_PACKAGES], check=False, capture_output=True)
        found = sorted(p for ext in ("*.ttf", "*.otf") for p in Path("/usr/share/fonts").rglob(ext))
    return [p for p in found if not any(w in p.name.lower() for w in NOT_LETTERS)]


def _bitmap(font, ch: str) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("L", (96, 96))
    ImageDraw.Draw(im).text((8, 4), ch, fill=255, font=font)
    return im.tobytes()


def usable(path: Path):
    """The font at 64 pt when it draws ten distinct letters, none of them its missing-glyph box."""
    from PIL import ImageFont

    try:
        font = ImageFont.truetype(str(path), 64)
    except OSError:
        return None
    missing = _bitmap(font, "\U0010fffd")
    maps = [_bitmap(font, ch) for ch in LETTERS]
    if len(set(maps)) < len(LETTERS) or missing in maps or not all(any(m) for m in maps):
        return None
    return font


STYLE = re.compile(
    r"(bold|italic|oblique|slanted|light|medium|regular|semibold|extrabold|black|thin|narrow|condensed|book|demi|"
    r"heavy|display|no\d|std|pro)$"
)


def family(path: Path) -> str:
    """The type family, weights and styles stripped (FreeMonoBoldOblique -> freemono), so that a font's bold is
    never in test while its regular is in train."""
    name = path.stem.split("-")[0].split("_")[0].lower()
    while (shorter := STYLE.sub("", name)) != name and shorter:
        name = shorter
    return name


def render_tree(root: Path, per_font: int, seed: int = 0) -> dict:
    """ROOT/train/<letter>/... and ROOT/test/<letter>/...; test holds the fonts of a fifth of the families."""
    if (root / "fonts.json").is_file():
        return json.loads((root / "fonts.json").read_text())
    from PIL import Image, ImageDraw, ImageFont

    by_family: dict[str, list[Path]] = {}
    for p in font_files():
        if usable(p) is not None:
            by_family.setdefault(family(p), []).append(p)
    by_family = {f: ps[:PER_FAMILY] for f, ps in by_family.items()}  # no family outweighs the others
    fonts = [p for ps in by_family.values() for p in ps]
    test_families: set[str] = set()
    for f in sorted(by_family, key=lambda f: hashlib.sha256(f.encode()).hexdigest()):  # a seeded family order
        if sum(len(by_family[t]) for t in test_families) < TEST_SHARE * len(fonts):
            test_families.add(f)
    rng = np.random.default_rng(seed)
    split: dict[str, list[str]] = {"train": [], "test": []}
    for p in fonts:
        side = "test" if family(p) in test_families else "train"
        split[side].append(p.name)
        for li, ch in enumerate(LETTERS):
            d = root / side / ch
            d.mkdir(parents=True, exist_ok=True)
            for k in range(per_font):
                side_px = int(rng.integers(64, 129))
                w = side_px + int(rng.integers(-8, 9))
                font = ImageFont.truetype(str(p), int(side_px * rng.uniform(0.55, 0.85)))
                bg, fg = (int(v) for v in (rng.integers(0, 90), rng.integers(165, 256)))
                if rng.random() < 0.5:
                    bg, fg = 255 - bg, 255 - fg  # dark on light as often as light on dark
                im = Image.new("L", (w, side_px), bg)
                draw = ImageDraw.Draw(im)
                box = draw.textbbox((0, 0), ch, font=font)
                gw, gh = box[2] - box[0], box[3] - box[1]
                x = (w - gw) / 2 - box[0] + rng.uniform(-0.1, 0.1) * w
                y = (side_px - gh) / 2 - box[1] + rng.uniform(-0.1, 0.1) * side_px
                draw.text((x, y), ch, fill=fg, font=font)
                im = im.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR, fillcolor=bg)
                im.save(d / f"{p.stem}-{li}-{k}.png")
    info = {"fonts": len(fonts), "train_fonts": len(split["train"]), "test_fonts": len(split["test"])}
    info |= {"families": len(by_family), "test_families": sorted(test_families), **split}
    (root / "fonts.json").write_text(json.dumps(info, indent=1))
    return info


def config(args, seed: int, extra: list[str] | None = None):
    tree = WORK / f"tree-{args.per_font}"
    base = [
        *isolated(WORK),
        "data.dataset=imagefolder",
        f"data.source={tree}",
        "data.image_size=64",
        "data.store_size=72",
        "data.channels=1",
        "data.train_crop=resized",
        "data.crop_scale=[0.5, 1.0]",
        "data.hflip=false",
        f"data.val_size={args.val_size}",
        "teacher.arch=tv:resnet18",
        "teacher.amp=off",  # bf16 autocast is for the CPUs that have it; this bench compares models, not speed
        f"teacher.epochs={args.teacher_epochs}",
        f"train.seed={seed}",
        f"distill.temperature={args.temperature}",
        f"distill.alpha={args.alpha}",
        "evaluate.latency_repeats=5",
        "gate.max_latency_p95_ms=1000",
    ]
    return load_config(ROOT / "configs" / "fashion_mnist.yaml", None, base + (extra or []))


def _metric(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["test_accuracy"]


def run(args) -> None:
    info = render_tree(WORK / f"tree-{args.per_font}", args.per_font)
    print(f"[glyphs] {info['fonts']} fonts: {info['train_fonts']} train, {info['test_fonts']} test", flush=True)
    runs = WORK / f"p{args.per_font}-t{args.teacher_epochs}-e{args.epochs}-T{args.temperature:g}-a{args.alpha:g}"
    runs.mkdir(parents=True, exist_ok=True)
    data_dir = runs / "data"
    if not (data_dir / "manifest.json").is_file():
        steps.prep(config(args, 0), data_dir)
    teacher = runs / "teacher"
    if not (teacher / "model.pt").is_file():
        t0 = time.perf_counter()
        steps.train(config(args, 0), "teacher", data_dir, teacher)
        print(f"[glyphs] teacher: {time.perf_counter() - t0:.0f} s", flush=True)
    scores: dict[str, dict[int, float]] = {"teacher": {0: _metric(teacher)}}
    for arch in args.students:
        lr = args.student_lr.get(arch)
        for seed in args.seeds:
            extra = [f"student.arch={arch}", f"student.epochs={args.epochs}", *([f"train.lr={lr}"] if lr else [])]
            for row, fn in (("scratch", None), ("distilled", teacher / "model.pt")):
                out = runs / f"{arch.replace(':', '_')}{f'-lr{lr:g}' if lr else ''}-{row}-s{seed}"
                if not (out / "model.pt").is_file():
                    t0 = time.perf_counter()
                    if fn is None:
                        steps.train(config(args, seed, extra), "scratch", data_dir, out)
                    else:
                        steps.distill(config(args, seed, extra), data_dir, fn, out)
                    print(f"[glyphs] {arch} {row} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
                scores.setdefault(f"{arch}/{row}", {})[seed] = _metric(out)
            report(args, info, scores, data_dir)


def _ms(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(args, info: dict, scores: dict, data_dir: Path) -> None:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    lines = [
        f"{info['fonts']} fonts of {info['families']} families from Debian's font packages (at most {PER_FAMILY} per "
        f"family; {info['train_fonts']} train, {info['test_fonts']} test, whole families: "
        f"{', '.join(info['test_families'])}, so test fonts are unseen), letters A-J, {args.per_font} renders per font and letter on canvases of "
        f"64-128 px; train {counts['train']:,}, val {counts['val']:,}, release {counts['release']:,}, test "
        f"{counts['test']:,} images. 64 px from a 72 px store, RandomResizedCrop (scale 0.5-1), no flip. Teacher "
        f"tv:resnet18 from scratch, {args.teacher_epochs} epochs: test {100 * scores['teacher'][0]:.2f}%. Students "
        f"{args.epochs} epochs, KD T={args.temperature:g} alpha={args.alpha:g}; test accuracy (%), final weights, "
        "mean ± std over the paired seeds.",
        "",
        "| student | seeds | scratch twin | distilled | gain (pt) |",
        "|---|---|---:|---:|---:|",
    ]
    for arch in args.students:
        s, d = scores.get(f"{arch}/scratch", {}), scores.get(f"{arch}/distilled", {})
        seeds = sorted(set(s) & set(d))
        if not seeds:
            continue
        gains = [100 * (d[k] - s[k]) for k in seeds]
        lr = args.student_lr.get(arch, 0.1)
        lines.append(
            f"| {arch} (lr {lr:g}) | {seeds} | {_ms([100 * s[k] for k in seeds])} | {_ms([100 * d[k] for k in seeds])} | "
            f"{_ms(gains) if len(gains) > 1 else f'{gains[0]:+.2f}'} |"
        )
    stuck = []  # every run of this setting, any lr: the ones whose training never rose above chance
    for hist in sorted(data_dir.parent.glob("*-s*/history.json")):
        h = json.loads(hist.read_text())
        if h and max(r["train_acc"] for r in h) < 1.5 / len(LETTERS):
            stuck.append(hist.parent.name)
    if stuck:
        lines += [
            "",
            f"Runs whose train accuracy never rose above chance (a failed run, not a result): {', '.join(stuck)}.",
        ]
    write_section(SECTION, "\n".join(lines))
    print("\n".join(lines), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    p.add_argument("--students", type=lambda s: s.split(","), default=["tv:mobilenet_v3_small", "cnn-small"])
    p.add_argument(
        "--student-lr",
        type=lambda s: {a: float(v) for a, v in (kv.split("=") for kv in s.split(",") if kv)},
        default={},
        help="ARCH=LR,...: a student's lr (default the config's 0.1); runs at another lr are kept apart",
    )
    p.add_argument("--per-font", type=int, default=4)
    p.add_argument("--val-size", type=int, default=600)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.5)
    run(p.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
