#!/usr/bin/env bash
# The main job: quantize the shipped checkpoint, export, make the Q/DQ graph TensorRT-ready, validate in
# onnxruntime on the real test set, and (where trtexec exists) build and validate the TensorRT engines.
#
#   scripts/run_pipeline.sh [DATA_DIR] [extra resnet_torch.py flags...]
#   TRAIN=1 scripts/run_pipeline.sh data --download     # train from scratch instead of using the checkpoint
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}; shift || true
OUT=${OUTPUT_DIR:-saved_models}
PY=${PYTHON:-python3}
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

if [ "${TRAIN:-0}" = 1 ] || [ ! -f "$CKPT" ]; then
  $PY resnet_torch.py --data-dir "$DATA" --output-dir "$OUT" "$@"
else
  $PY resnet_torch.py --data-dir "$DATA" --output-dir "$OUT" --checkpoint "$CKPT" "$@"
fi
$PY onnx_gs.py --input "$OUT/resnet_quantized_cifar10.onnx" --output "$OUT/resnet_quantized_cifar10_modified.onnx" \
  --data-dir "$DATA" --metrics "$OUT/metrics.json"
$PY -m eager2trt.fp16 --input "$OUT/resnet_cifar10.onnx" --output "$OUT/resnet_cifar10_fp16.onnx" --data-dir "$DATA"
$PY resnet_tensorrt.py --onnx "$OUT/resnet_quantized_cifar10_modified.onnx" --data-dir "$DATA" \
  --metrics "$OUT/metrics.json"
if command -v trtexec >/dev/null 2>&1; then
  OUTPUT_DIR=$OUT scripts/build_engines.sh
  $PY resnet_tensorrt.py --engine "$OUT/resnet_cifar10_int8.engine" --data-dir "$DATA" --metrics "$OUT/metrics.json"
else
  echo "trtexec not found: TensorRT engines skipped (use the Docker image, see README)."
fi
