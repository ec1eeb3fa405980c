#!/usr/bin/env bash
# The prepared CUDA check (#26): run it whenever a session is lent a GPU machine; CI never needs one.
#
#   scripts/gpu-check.sh            # about 5 minutes on one GPU; writes $OUT (default /tmp/kdflow-gpu)
#   DEVICE=cpu scripts/gpu-check.sh # a rehearsal of the same stages on the CPU (checks the wiring, not CUDA)
#
# 1. the smoke DAG with every training step on CUDA (bf16 autocast, channels_last);
# 2. one 224 px epoch of a torchvision resnet18 teacher on a generated image folder (fp16 + GradScaler);
# 3. the offline teacher cache built on the GPU, then a cached distillation.
# Each stage prints PASS or FAIL with its wall time; the exit status is the number of failed stages.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kdflow-gpu}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
rm -rf "$OUT" && mkdir -p "$OUT"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" KDFLOW_STORAGE_ROOT="$OUT/store"
failed=0

stage() {  # name, limit (s), command...
  local name=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "PASS $name ($(( $(date +%s) - start )) s)"
  else
    echo "FAIL $name ($(( $(date +%s) - start )) s): tail of $OUT/$name.log"; tail -5 "$OUT/$name.log"
    failed=$((failed + 1))
  fi
}

if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" \
    || { echo "FAIL: no CUDA device visible to torch"; exit 99; }
fi

common=(--set "train.device=$DEVICE" --set tracking.enabled=true --set "storage.state_dir=$OUT/state")

stage smoke-dag 150 "$PY" -m pipelines run --local --profile smoke --root "$OUT/dag" \
  "${common[@]}" --set train.amp=bf16 --set train.channels_last=true

stage images 30 "$PY" - "$OUT/images" <<'PYEOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root, rng = Path(sys.argv[1]), np.random.default_rng(0)
for c in range(4):
    (root / f"class{c}").mkdir(parents=True)
    for i in range(64):  # photos of mixed sizes, the class in their colour
        h, w = rng.integers(180, 320, 2)
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // 2 + np.array([60 * c, 40, 200 - 50 * c], np.uint8) // 2
        Image.fromarray(a.astype(np.uint8)).save(root / f"class{c}" / f"{i}.jpg")
PYEOF

data=(--set data.dataset=imagefolder --set "data.source=$OUT/images" --set data.image_size=224 --set data.val_size=32
      --set data.train_subset=null --set data.test_subset=null --set train.batch_size=32)
stage prep-224 60 "$PY" -m kdflow.cli prep --out "$OUT/data224" "${common[@]}" "${data[@]}"
stage teacher-224-fp16 120 "$PY" -m kdflow.cli train-teacher --data "$OUT/data224" --out "$OUT/teacher224" \
  "${common[@]}" "${data[@]}" --set teacher.arch=tv:resnet18 --set teacher.epochs=1 --set train.amp=fp16
stage cache-build 120 "$PY" -m kdflow.cli distill --data "$OUT/data224" --teacher "$OUT/teacher224/model.pt" \
  --out "$OUT/student224" "${common[@]}" "${data[@]}" --set student.arch=mobilenet-tiny --set student.epochs=1 \
  --set distill.cache=true --set train.amp=bf16

echo "$failed stage(s) failed; logs in $OUT"
exit "$failed"
