#!/usr/bin/env bash
# Install the Debian packages of the datasets (Fashion-MNIST, WordNet's noun glosses) when their files are
# missing and apt is available.
set -euo pipefail
declare -A PACKAGES=(
  [/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz]=dataset-fashion-mnist
  [/usr/share/wordnet/data.noun]=wordnet-base
)
MISSING=()
for file in "${!PACKAGES[@]}"; do
  if [ ! -f "$file" ]; then MISSING+=("${PACKAGES[$file]}"); fi
done
if [ ${#MISSING[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "kdflow: ${MISSING[*]} not found and apt-get is unavailable; set data.source to a directory with the files" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "kdflow: installing the Debian packages ${MISSING[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}"
