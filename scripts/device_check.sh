#!/usr/bin/env bash
# The one-shot GPU check: every GPU figure of report/benchmarks.md (TV-L1 in Keras: speed, batch,
# memory, parity; batched extraction; generators; training at 224 in float32 and mixed precision
# with the real generators; whole-video evaluation), in at most 8 minutes.
#
#   bash scripts/device_check.sh [OUT_DIR [more utils.bench options]]   # on the GPU machine
#                                                  (default OUT_DIR: report/device)
#   python -m utils.bench --merge OUT_DIR/benchmarks.csv    # back here: adds the figures to the report
#
# Any Keras backend: KERAS_BACKEND=jax (the default here) or torch; TensorFlow is not needed.
# WHEELS=DIR installs the wheels in DIR first (for a machine without a package index: keras,
# namex, optree). Rows are written after every stage: a run stopped early leaves what it measured
# in OUT_DIR/benchmarks.partial.csv (merge that instead).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-report/device}"
shift || true
mkdir -p "$out"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/device-check-site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/device-check-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND="${KERAS_BACKEND:-jax}" XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout --signal=INT 480 python3 -m utils.bench --device --fresh --out-dir "$out" "$@" 2>&1 | tee "$out/device_check.log"
