#!/usr/bin/env bash
# The one-shot GPU check: every GPU figure of report/benchmarks.md in at most 8 minutes, on any Keras
# backend (KERAS_BACKEND=jax by default, or torch; TensorFlow is not needed).
#
#   bash scripts/device_check.sh [OUT_DIR [more utils.bench options]]   # on the GPU machine (OUT_DIR: report/device)
#   python -m utils.bench --merge OUT_DIR/benchmarks.csv               # back here: adds the figures to the report
#
# Keras on a machine without it (the lent GPU machines have JAX, NumPy, h5py, rich, ml-dtypes but no
# keras, namex, optree): make the wheels here, for that machine's Python (3.12), into the git-ignored
# .whl/ folder, which travels with the working tree (the device tool: carry [".whl"]):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
#
# When `import keras` fails, this script installs .whl/*.whl (or WHEELS=DIR/*.whl) into
# /tmp/device-check-site and puts it on PYTHONPATH; without wheels it stops and says so.
#
# 1. Smoke test (SMOKE_TIMEOUT, 60 s): Keras runs on the GPU that nvidia-smi sees and TV-L1 in Keras
#    finds a 1-pixel shift; if not, the check stops here with the reason, having measured nothing.
# 2. The measurements (python -m utils.bench --device, a 380-s budget; what does not fit gets a row
#    "skipped: budget"), stopped at CHECK_TIMEOUT (405 s) with SIGINT and killed 15 s later. Rows
#    are written as they are measured: a stopped run leaves OUT_DIR/benchmarks.partial.csv (merge it).
# Compiled XLA programs persist in JAX_COMPILATION_CACHE_DIR (default report/jax-cache): a second run
# on the same machine (or with that folder carried) compiles nothing again.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-report/device}"
shift || true
mkdir -p "$out"
python="${PYTHON:-python3}"
export KERAS_BACKEND="${KERAS_BACKEND:-jax}" XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 \
       PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/report/jax-cache}"
if ! "$python" -c "import keras" 2>/dev/null; then
  wheels="${WHEELS:-.whl}"
  if ! compgen -G "$wheels/*.whl" >/dev/null; then
    echo "device check STOPPED: keras cannot be imported and $wheels/ holds no wheels; make them with the" \
         "pip download command at the top of $0" >&2
    exit 2
  fi
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/device-check-site "$wheels"/*.whl
  export PYTHONPATH="/tmp/device-check-site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: no NVIDIA GPU"
if ! timeout --kill-after=10 "${SMOKE_TIMEOUT:-60}" "$python" -m utils.bench --smoke 2>&1 | tee "$out/smoke.log"; then
  echo "device check STOPPED: the smoke test failed or ran past ${SMOKE_TIMEOUT:-60} s (see $out/smoke.log);" \
       "nothing was measured" >&2
  exit 1
fi
set +e
timeout --signal=INT --kill-after=15 "${CHECK_TIMEOUT:-405}" "$python" -m utils.bench --device --fresh \
    --out-dir "$out" "$@" 2>&1 | tee "$out/device_check.log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "device check: stopped at ${CHECK_TIMEOUT:-405} s; the rows measured are in $out/benchmarks.partial.csv" >&2
fi
exit "$status"
