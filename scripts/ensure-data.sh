#!/usr/bin/env bash
# Install the Debian Fashion-MNIST package when the data is missing and apt is available.
set -euo pipefail
DATA=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ -f "$DATA" ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "kdflow: Fashion-MNIST not found and apt-get is unavailable; set data.source to a directory with the IDX files" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "kdflow: installing the Debian package dataset-fashion-mnist"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
