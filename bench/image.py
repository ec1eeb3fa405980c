"""The component image, measured: build times (cold, no change, code change; wheelhouse and index routes),
size and what of it is CUDA, and a scan of every file of the image for the proxy's CA and credentials.

    .venv/bin/python bench/image.py            # wheelhouse route only
    .venv/bin/python bench/image.py --index    # also a cold build from the package index (network)

Writes the "Container image: build times" and "...: contents" sections of bench/RESULTS.md (--scan-only:
the second only). Root and podman are needed (`make image` once).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import image_scan  # noqa: E402

from components.image import KDFLOW_IMAGE  # noqa: E402

ENV = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "docker/containers.conf"))}
ENV["PIP"] = str(Path(sys.executable).parent / "pip")


def build(**env: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [str(ROOT / "scripts/build-image.sh")], cwd=ROOT, env={**ENV, **env}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"build failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def code_change_build() -> float:
    touch = ROOT / "src" / "kdflow" / "_bench_image_touch.py"
    touch.write_text(f"# {time.time()}\n")
    try:
        return build()
    finally:
        touch.unlink()


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, check=True).stdout


def size_breakdown(mount: Path) -> list[tuple[str, int]]:
    site = mount / "opt/venv/lib/python3.11/site-packages"
    groups = {
        "CUDA libraries (nvidia-*, cuda-*)": [*site.glob("nvidia*"), *site.glob("cuda*")],
        "triton (GPU compiler)": [*site.glob("triton*")],
        "torch + torchvision": [*site.glob("torch"), *site.glob("torchvision*"), *site.glob("torch-*")],
        "other Python packages": [],
    }
    seen = {p for ps in groups.values() for p in ps}
    groups["other Python packages"] = [p for p in site.iterdir() if p not in seen]

    def du(paths: list[Path]) -> int:
        out = subprocess.run(["du", "-sb", *map(str, paths)], capture_output=True, text=True).stdout if paths else ""
        return sum(int(line.split()[0]) for line in out.splitlines())

    rows = [(name, du(paths)) for name, paths in groups.items()]
    rows.append(("Debian base (python3, libc, ...)", du([mount]) - du([mount / "opt/venv"])))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", action="store_true", help="also time a cold build with torch from the index")
    ap.add_argument("--scan-only", action="store_true", help="no builds: size and scan of the current image")
    args = ap.parse_args()
    times = {}
    if not args.scan_only:
        times["cold, wheelhouse (base present)"] = build(NO_CACHE="1")
        times["no change"] = build()
        times["code change (one file under src/)"] = code_change_build()
    if args.index and not args.scan_only:
        times["cold, package index (base present)"] = build(NO_CACHE="1", TORCH_SOURCE="index")
        build()  # leave the default route's image tagged
    size = int(podman("image", "inspect", KDFLOW_IMAGE, "--format", "{{.Size}}"))
    mount = Path(podman("image", "mount", KDFLOW_IMAGE).strip())
    try:
        breakdown = size_breakdown(mount)
    finally:
        podman("image", "unmount", KDFLOW_IMAGE)
    counts, found = image_scan.scan_image(KDFLOW_IMAGE)
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", KDFLOW_IMAGE)
    hadolint = subprocess.run(
        [str(Path(sys.executable).parent / "hadolint"), str(ROOT / "docker/Dockerfile")], capture_output=True
    ).returncode

    if times:
        table = ["| build | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in times.items()]
        body = "\n".join(table)
        print(body)
        write_section("Container image: build times", body)
    lines = [f"Image `{KDFLOW_IMAGE}`: **{size / 1e9:.2f} GB** (podman's size).", ""]
    lines += ["| part | GB | share |", "|---|---|---|"]
    total = sum(b for _, b in breakdown)
    lines += [f"| {name} | {b / 1e9:.2f} | {100 * b / total:.0f}% |" for name, b in breakdown]
    lines += [
        "",
        f"- hadolint: {'clean' if hadolint == 0 else f'exit {hadolint}'}",
        "- layer scan (scripts/image_scan.py), every file of the image; searched for "
        + ", ".join(f"{n} {k}(s)" for k, n in counts.items() if k != "control")
        + " and credential files by name: "
        + "; ".join(f"{k}: {len(v)} hit(s) {v[:3]}" for k, v in found.items()),
        f"- history: the CA enters only as a build secret (`pipcert` mount: {'pipcert' in history}), "
        f"the wheelhouse only as a bind mount",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("Container image: contents", body)
    return 0 if not any(v for k, v in found.items() if k != "control") else 1


if __name__ == "__main__":
    sys.exit(main())
