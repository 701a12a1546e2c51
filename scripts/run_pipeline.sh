#!/usr/bin/env bash
# The main job: quantize the shipped checkpoint, export, make the Q/DQ graph TensorRT-ready (exact and fast
# placement) and verify both on the real test set, in one process; then, where trtexec exists, build and
# validate the TensorRT engines.
#
#   scripts/run_pipeline.sh [DATA_DIR] [extra resnet_torch.py flags...]
#   TRAIN=1 scripts/run_pipeline.sh data --download     # train from scratch instead of using the checkpoint
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}; shift || true
OUT=${OUTPUT_DIR:-saved_models}
source scripts/env.sh   # .venv with requirements.txt on first use; $PYTHON, when set, is used as it is
PY=$PYTHON
CKPT=${CHECKPOINT:-$OUT/resnet_cifar10.pt}

# Hold the output folder's lock (the file the Python tools flock) for the whole pipeline, so two pipelines
# into one folder cannot interleave; the tools are told through EAGER2TRT_LOCKED_DIRS that we hold it.
mkdir -p "$OUT"
exec 9>>"$OUT/.eager2trt.lock"
if ! flock -n 9; then
  echo "error: output directory $OUT is in use by another run (it holds $OUT/.eager2trt.lock); wait for that run to finish or set OUTPUT_DIR to another folder" >&2
  exit 2
fi
export EAGER2TRT_LOCKED_DIRS="$(cd "$OUT" && pwd -P)${EAGER2TRT_LOCKED_DIRS:+:$EAGER2TRT_LOCKED_DIRS}"

# One process: quantize, export, make both TensorRT-ready graphs, verify them on the test set, FP16 ONNX.
if [ "${TRAIN:-0}" = 1 ] || [ ! -f "$CKPT" ]; then
  echo "no checkpoint at $CKPT (or TRAIN=1): training from scratch first" >&2
  $PY resnet_torch.py --data-dir "$DATA" --output-dir "$OUT" --fp16-onnx "$@"
else
  $PY resnet_torch.py --data-dir "$DATA" --output-dir "$OUT" --checkpoint "$CKPT" --fp16-onnx "$@"
fi
# NGC TensorRT images put trtexec in one of these without always adding it to PATH
for dir in /opt/tensorrt/bin /usr/src/tensorrt/bin; do
  command -v trtexec >/dev/null 2>&1 || [ ! -x "$dir/trtexec" ] || PATH="$dir:$PATH"
done
if command -v trtexec >/dev/null 2>&1; then
  OUTPUT_DIR=$OUT PYTHON=$PY scripts/build_engines.sh
  $PY resnet_tensorrt.py --engine "$OUT/resnet_cifar10_int8.engine" --data-dir "$DATA" --metrics "$OUT/metrics.json"
  if [ -f "$OUT/resnet_quantized_cifar10_fast.onnx" ]; then  # build_engines.sh built the fast engine too
    $PY resnet_tensorrt.py --engine "$OUT/resnet_cifar10_int8_fast.engine" --data-dir "$DATA" \
      --metrics "$OUT/metrics.json"
  fi
elif [ "${EAGER2TRT_REQUIRE_TENSORRT:-0}" = 1 ]; then
  echo "error: EAGER2TRT_REQUIRE_TENSORRT=1 (set in the Docker image) but trtexec is not on PATH, in /opt/tensorrt/bin or in /usr/src/tensorrt/bin; use an NGC TensorRT base image, or unset the variable to skip the engines" >&2
  exit 2
else
  echo "trtexec not found: TensorRT engines skipped (use the Docker image, see README)."
fi
