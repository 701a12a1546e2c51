#!/usr/bin/env bash
# The main job: quantize the shipped checkpoint, export, make the Q/DQ graph TensorRT-ready (exact and fast
# placement), validate both in onnxruntime on the real test set, and (where trtexec exists) build and
# validate the TensorRT engines.
#
#   scripts/run_pipeline.sh [DATA_DIR] [extra resnet_torch.py flags...]
#   TRAIN=1 scripts/run_pipeline.sh data --download     # train from scratch instead of using the checkpoint
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}; shift || true
OUT=${OUTPUT_DIR:-saved_models}
PY=${PYTHON:-python3}
CKPT=${CHECKPOINT:-$OUT/resnet_cifar10.pt}

if [ "${TRAIN:-0}" = 1 ] || [ ! -f "$CKPT" ]; then
  $PY resnet_torch.py --data-dir "$DATA" --output-dir "$OUT" "$@"
else
  $PY resnet_torch.py --data-dir "$DATA" --output-dir "$OUT" --checkpoint "$CKPT" "$@"
fi
$PY onnx_gs.py --input "$OUT/resnet_quantized_cifar10.onnx" --output "$OUT/resnet_quantized_cifar10_modified.onnx" \
  --data-dir "$DATA" --metrics "$OUT/metrics.json"
# Fast mode: the placement TensorRT fuses best, held to PyTorch INT8 accuracy (not bit-exactness).
$PY onnx_gs.py --mode fast --input "$OUT/resnet_quantized_cifar10.onnx" \
  --output "$OUT/resnet_quantized_cifar10_fast.onnx" --data-dir "$DATA" --metrics "$OUT/metrics.json"
$PY -m eager2trt.fp16 --input "$OUT/resnet_cifar10.onnx" --output "$OUT/resnet_cifar10_fp16.onnx" --data-dir "$DATA"
for graph in resnet_quantized_cifar10_modified resnet_quantized_cifar10_fast; do
  $PY resnet_tensorrt.py --onnx "$OUT/$graph.onnx" --data-dir "$DATA" --metrics "$OUT/metrics.json"
done
if command -v trtexec >/dev/null 2>&1; then
  OUTPUT_DIR=$OUT scripts/build_engines.sh
  $PY resnet_tensorrt.py --engine "$OUT/resnet_cifar10_int8.engine" --data-dir "$DATA" --metrics "$OUT/metrics.json"
else
  echo "trtexec not found: TensorRT engines skipped (use the Docker image, see README)."
fi
