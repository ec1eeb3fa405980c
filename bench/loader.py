"""Loader throughput and bounded memory for image folders (issue #26).

1. Throughput: a tree of JPEG photos of mixed sizes (Fashion-MNIST images scaled to 180-420 px with a colour
   tint, written here; nothing downloaded), read at 64, 128 and 224 px for one training epoch:
   - kdflow: ``kdflow prep`` decodes once into the disk store (its one-time cost reported, with the epochs
     after which it has paid for itself), then ``iterate`` with RandomCrop(padding) + flip, normalized;
   - torchvision: ``ImageFolder`` + ``DataLoader``, the same transforms per epoch (decode, Resize +
     CenterCrop, RandomCrop(padding) + flip, normalize). The same worker count and batch size for both.
   Target: kdflow >= 1.5x torchvision, never below 1.0x.
2. Peak RSS: a tree whose decoded pixels are >= 5x a memory ceiling, prepared with data.storage=disk and
   trained one full epoch by kdflow's ``fit`` (a small pooled conv net, a DataLoader worker) in a child
   process; its peak RSS and its worker's against the ceiling.

    .venv/bin/python bench/loader.py                    # 2,000 photos; RSS: 1 GiB ceiling, 5.3 GiB of pixels
    .venv/bin/python bench/loader.py --quick            # smaller trees, a look only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "loader"
SECTION = "Image loader: throughput and bounded memory"
PADDING = 4


def write_tree(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs in 10 class folders, each a Fashion-MNIST image at another size and tint."""
    if (root / ".complete").is_file():
        return root
    from PIL import Image

    from kdflow.data.raw import DEBIAN_DIRS, _load_idx_dir

    arrays = _load_idx_dir(DEBIAN_DIRS["fashion-mnist"][0])
    assert arrays is not None, "Fashion-MNIST missing: `make data` installs it"
    xs, ys = arrays["train_x"], arrays["train_y"]
    rng = np.random.default_rng(seed)
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(180, 421, 2))
        tint = rng.uniform(0.5, 1.0, 3)
        grey = np.asarray(xs[i % len(xs)], dtype=np.float32)
        rgb = np.clip(grey[..., None] * tint + rng.uniform(0, 40, 3), 0, 255).astype(np.uint8)
        Image.fromarray(rgb, "RGB").resize((w, h), Image.BILINEAR).save(
            root / str(int(ys[i % len(ys)])) / f"{i}.jpg", quality=90
        )
        if (i + 1) % 5000 == 0:
            print(f"  wrote {i + 1}/{n} photos", flush=True)
    (root / ".complete").write_text("")
    return root


def prep(tree: Path, out: Path, size: int, storage: str = "disk") -> float:
    from kdflow.config import build_config
    from kdflow.data import prepared

    cfg = build_config(
        {
            "data": {
                "dataset": "imagefolder",
                "source": str(tree),
                "image_size": size,
                "channels": 3,
                "storage": storage,
                "val_size": 50,
                "release_fraction": 0.01,
                "crop_padding": PADDING,
            }
        }
    ).data
    t0 = time.perf_counter()
    prepared.prepare(cfg, out)
    return time.perf_counter() - t0


PREP_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
import loader
seconds = loader.prep(loader.Path(sys.argv[1]), loader.Path(sys.argv[2]), int(sys.argv[3]))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": seconds, "hwm_kib": int(hwm)}))
"""


def kdflow_epoch(out: Path, batch: int, workers: int) -> tuple[float, int]:
    from kdflow.data import prepared

    d = prepared.load_prepared(out)
    t0, n = time.perf_counter(), 0
    for xb, _, _ in prepared.iterate(
        d.train, batch, d.normalizer(), shuffle=True, augment=d.manifest["augmentation"], seed=1, workers=workers
    ):
        n += len(xb)
    return time.perf_counter() - t0, n


def torchvision_epoch(tree: Path, size: int, batch: int, workers: int) -> tuple[float, int]:
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.RandomCrop(size, padding=PADDING),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.25] * 3),
        ]
    )
    ds = datasets.ImageFolder(str(tree), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    t0, n = time.perf_counter(), 0
    for xb, _ in loader:
        n += len(xb)
    return time.perf_counter() - t0, n


def throughput(args) -> list[dict]:
    tree = write_tree(WORK / f"photos-{args.photos}", args.photos)
    rows = []
    for size in (64, 128, 224):
        out = WORK / f"prepared-{args.photos}-{size}"
        prep_s = prep(tree, out, size) if not (out / "manifest.json").is_file() else float("nan")
        kd_s, kd_n = kdflow_epoch(out, args.batch, args.workers)
        mem = WORK / f"prepared-{args.photos}-{size}-memory"
        if not (mem / "manifest.json").is_file():
            prep(tree, mem, size, "memory")
        mem_s, mem_n = kdflow_epoch(mem, args.batch, 0)  # in memory: a batch is one indexing op, no worker
        tv_s, tv_n = torchvision_epoch(tree, size, args.batch, args.workers)
        row = {
            "size": size,
            "kdflow": kd_n / kd_s,
            "memory": mem_n / mem_s,
            "torchvision": tv_n / tv_s,
            "prep_s": prep_s,
            "tv_epoch_s": tv_s,
            "kd_epoch_s": kd_s,
        }
        row["ratio"] = row["kdflow"] / row["torchvision"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


CHILD = r"""
import json, resource, sys, time, torch
from kdflow.config import build_config
from kdflow.data import prepared
from kdflow.training.objective import SupervisedObjective
from kdflow.training.trainer import fit
out, run = sys.argv[1], sys.argv[2]
d = prepared.load_prepared(out)
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.AvgPool2d(4), torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(),
    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, d.num_classes))
cfg = build_config({"train": {"batch_size": 64, "loader_workers": 1, "warmup_epochs": 0}}).train
t0 = time.perf_counter()
r = fit(model, SupervisedObjective(), d, cfg, epochs=1, lr=0.05, out_dir=run, resume=False)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": time.perf_counter() - t0, "images": len(d.train), "hwm_kib": int(hwm)}))
"""


def _kib(pid: int, path: str, key: str) -> int:
    try:
        for line in open(f"/proc/{pid}/{path}"):
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_pids(pid: int) -> list[int]:
    try:
        kids = [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return [pid]
    return [pid] + [q for k in kids for q in _tree_pids(k)]


def run_sampled(cmd: list[str]) -> tuple[str, dict]:
    """Run ``cmd``, sampling every 0.1 s its RSS and the proportional set size (PSS: shared pages split between
    the processes that map them, so it sums) of it and its workers."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = {"workers_rss_kib": 0, "tree_pss_kib": 0}
    while proc.poll() is None:
        pids = _tree_pids(proc.pid)
        peak["workers_rss_kib"] = max(peak["workers_rss_kib"], sum(_kib(p, "status", "VmRSS") for p in pids[1:]))
        peak["tree_pss_kib"] = max(peak["tree_pss_kib"], sum(_kib(p, "smaps_rollup", "Pss:") for p in pids))
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise SystemExit(f"the training child failed ({proc.returncode})")
    return out, peak


def peak_rss(args) -> dict:
    ceiling = args.ceiling_gib * (1 << 30)
    per_image = 3 * 224 * 224
    n = int(5.2 * ceiling / per_image) + 1
    tree = write_tree(WORK / f"photos-{n}", n, seed=1)
    out = WORK / f"prepared-{n}-224"
    prep_s, prep_rss, prep_pss = float("nan"), None, None
    if not (out / "manifest.json").is_file():  # in a child, so its memory is its own (decode workers included)
        here = str(Path(__file__).resolve().parent)
        stdout, sampled = run_sampled([sys.executable, "-c", PREP_CHILD, str(tree), str(out), "224", here])
        done = json.loads(stdout.strip().splitlines()[-1])
        prep_s, prep_rss, prep_pss = done["seconds"], done["hwm_kib"] * 1024, sampled["tree_pss_kib"] * 1024
    saved = WORK / f"prep-rss-{n}.json"
    if prep_rss is not None:
        saved.write_text(json.dumps({"prep_s": prep_s, "prep_rss": prep_rss, "prep_pss": prep_pss}))
    elif saved.is_file():  # prep was measured by an earlier run of this bench on the same tree
        p = json.loads(saved.read_text())
        prep_s, prep_rss, prep_pss = p["prep_s"], p["prep_rss"], p["prep_pss"]
    stdout, peak = run_sampled([sys.executable, "-c", CHILD, str(out), str(WORK / "rss-run")])
    child = json.loads(stdout.strip().splitlines()[-1])
    store = out / "pixels.u8"
    res = {
        "images": n,
        "decoded_gib": store.stat().st_size / (1 << 30),
        "ceiling_gib": args.ceiling_gib,
        "train_rss_gib": child["hwm_kib"] / (1 << 20),
        "worker_rss_gib": peak["workers_rss_kib"] / (1 << 20),
        "tree_pss_gib": peak["tree_pss_kib"] / (1 << 20),
        "epoch_s": child["seconds"],
        "train_images": child["images"],
        "prep_s": prep_s,
        "prep_rss_gib": prep_rss / (1 << 30) if prep_rss else None,
        "prep_pss_gib": prep_pss / (1 << 30) if prep_pss else None,
    }
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ceiling-gib", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.photos, args.ceiling_gib = 300, 0.05
    rows = throughput(args)
    rss = peak_rss(args)
    lines = [
        f"Throughput: {args.photos} JPEG photos of 180-420 px, batch {args.batch}, {args.workers} loader worker(s) "
        f"for both, one epoch each (RandomCrop(padding {PADDING}) + flip + normalize; kdflow's epoch is its train "
        "split, the tree less test, val and release, so images/s compare). kdflow reads the disk store that prep "
        "decoded once; torchvision decodes and resizes every epoch.",
        "",
        "| size | kdflow img/s (disk, 1 worker) | torchvision img/s | ratio | target | kdflow prep (once) | prep paid back after | kdflow in memory img/s (no worker) |",
        "|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        saved = r["tv_epoch_s"] - r["kd_epoch_s"]
        payback = f"{r['prep_s'] / saved:.1f} epochs" if saved > 0 and r["prep_s"] == r["prep_s"] else "-"
        met = "met" if r["ratio"] >= 1.5 else ("missed" if r["ratio"] >= 1.0 else "missed (below 1.0x)")
        prep_txt = f"{r['prep_s']:.1f} s" if r["prep_s"] == r["prep_s"] else "(cached)"
        lines.append(
            f"| {r['size']} | {r['kdflow']:.0f} | {r['torchvision']:.0f} | {r['ratio']:.2f}x | >= 1.5x: {met} | "
            f"{prep_txt} | {payback} | {r['memory']:.0f} |"
        )
    ok = rss["train_rss_gib"] <= rss["ceiling_gib"] and rss["tree_pss_gib"] <= rss["ceiling_gib"]
    lines += [
        "",
        f"Peak RSS: {rss['images']:,} photos prepared at 224 px with data.storage=disk: {rss['decoded_gib']:.2f} GiB "
        f"of decoded pixels, {rss['decoded_gib'] / rss['ceiling_gib']:.1f}x the {rss['ceiling_gib']:g} GiB ceiling. "
        f"One epoch of `fit` ({rss['train_images']:,} images, a pooled conv net, 1 loader worker) in a child "
        f"process: {rss['epoch_s']:.0f} s.",
        "",
        "| process | peak | ceiling | |",
        "|---|---:|---:|---|",
        f"| training (main), RSS high-water mark | {rss['train_rss_gib']:.2f} GiB | {rss['ceiling_gib']:g} GiB | "
        f"{'met' if ok else 'missed'} |",
        f"| its loader worker, RSS (sampled; shares the main's pages) | {rss['worker_rss_gib']:.2f} GiB | | |",
        f"| main + worker, PSS (sampled; shared pages counted once) | {rss['tree_pss_gib']:.2f} GiB | "
        f"{rss['ceiling_gib']:g} GiB | {'met' if ok else 'missed'} |",
    ]
    if rss["prep_rss_gib"] is not None:
        lines.append(
            f"| prep, RSS high-water mark ({rss['prep_s']:.0f} s, decode workers from the CPU quota) | "
            f"{rss['prep_rss_gib']:.2f} GiB | {rss['ceiling_gib']:g} GiB | "
            f"{'met' if rss['prep_rss_gib'] <= rss['ceiling_gib'] else 'missed'} |"
        )
        lines.append(f"| prep + its decode workers, PSS (sampled) | {rss['prep_pss_gib']:.2f} GiB | | |")
    write_section(SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
