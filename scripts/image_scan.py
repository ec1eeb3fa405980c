"""Search every file of a podman image for what must never be in it: one line of each CA this host trusts
beyond the image's own bundle (a TLS-intercepting proxy's, passed to the build as a secret), this host's
secret values (secret-looking environment variables, the local stack's keys) and credential files by name.

    python scripts/image_scan.py [IMAGE] [--also TEXT]   # exit 1 on any hit; --also: a control needle

Used by bench/image.py and the container tests. Root (podman image mount) is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "docker/containers.conf"))}
HOST_BUNDLE = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
CREDENTIAL_FILES = {".netrc", ".git-credentials", ".pypirc", "credentials", "stack.json", "pip.conf", "config.json"}
SECRET_ENV = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY")


def cert_bodies(path: Path) -> set[str]:
    text = path.read_text() if path.is_file() else ""
    return set(re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", text, re.S))


def host_secrets() -> list[str]:
    values = [v for k, v in os.environ.items() if any(s in k for s in SECRET_ENV) and len(v) >= 12]
    stack = ROOT / ".kdflow" / "stack" / "stack.json"
    if stack.is_file():
        values += [v for k, v in json.loads(stack.read_text()).items() if "key" in k.lower() and isinstance(v, str)]
    return values


def _files_holding(paths: list[str], needles: list[str], recursive: bool = False) -> list[str]:
    """The paths (files, or every file under them with ``recursive``) that hold one of ``needles`` (grep -F)."""
    if not needles or not paths:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as patterns:
        patterns.write("\n".join(needles) + "\n")
        patterns.flush()
        flags = "-rlaF" if recursive else "-laF"
        out = subprocess.run(["grep", flags, "-f", patterns.name, "--", *paths], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line]


def grep(mount: Path, needles: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per kind of needle, the files under ``mount`` that hold one: one pass over the image's ~7 GB with every
    needle, then each kind's needles over the few files that pass found."""
    found = _files_holding([str(mount)], [n for kind in needles.values() for n in kind], recursive=True)
    return {what: [f.removeprefix(str(mount)) for f in _files_holding(found, kind)] for what, kind in needles.items()}


def scan_mount(mount: Path, also: list[str] | None = None) -> tuple[dict[str, int], dict[str, list[str]]]:
    """(how many needles of each kind were searched for, the files that hold one)."""
    proxy_cas = [
        body.splitlines()[1]
        for body in cert_bodies(HOST_BUNDLE) - cert_bodies(mount / "etc/ssl/certs/ca-certificates.crt")
    ]
    needles = {"proxy CA": proxy_cas, "host secret": host_secrets(), "control": also or []}
    hits = grep(mount, {what: n for what, n in needles.items() if what != "control" or n})
    hits["credential file"] = [
        str(p.relative_to(mount))
        for p in mount.rglob("*")
        if p.name in CREDENTIAL_FILES and p.is_file() and ("/." in str(p) or p.parent.name in {"stack", ".aws", "etc"})
    ]
    return {what: len(n) for what, n in needles.items()}, hits


def scan_image(image: str, also: list[str] | None = None) -> tuple[dict[str, int], dict[str, list[str]]]:
    mount = subprocess.run(["podman", "image", "mount", image], env=ENV, capture_output=True, text=True, check=True)
    try:
        return scan_mount(Path(mount.stdout.strip()), also)
    finally:
        subprocess.run(["podman", "image", "unmount", image], env=ENV, capture_output=True)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from components.image import KDFLOW_IMAGE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?", default=KDFLOW_IMAGE)
    ap.add_argument("--also", action="append", default=[], help="a needle that should be found (a control)")
    args = ap.parse_args()
    counts, hits = scan_image(args.image, args.also)
    print("searched for: " + ", ".join(f"{n} {what}(s)" for what, n in counts.items()) + "; credential files by name")
    for what, files in hits.items():
        print(f"{what}: {len(files)} hit(s) {files[:5]}")
    return 1 if any(files for what, files in hits.items() if what != "control") else 0


if __name__ == "__main__":
    sys.exit(main())
