#!/usr/bin/env bash
# Build the FP16 and INT8 TensorRT engines with trtexec, as the reference does, for TensorRT 10 or 11.
#
#   scripts/build_engines.sh            # batch 1 (SHAPES=input:1x3x32x32)
#   SHAPES=input:64x3x32x32 scripts/build_engines.sh
#   MIN_SHAPES=input:1x3x32x32 OPT_SHAPES=input:64x3x32x32 MAX_SHAPES=input:256x3x32x32 scripts/build_engines.sh
#
# TensorRT 10: the reference's --fp16 / --int8 flags (weak typing, deprecated in 10).
# TensorRT 11: every network is strongly typed and the precision flags are gone
# (docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-10x-to-11x-trtexec.html), so the
# FP16 engine is built from an FP16 ONNX (python -m eager2trt.fp16) and the Q/DQ ONNX carries its own types.
set -euo pipefail
OUT=${OUTPUT_DIR:-saved_models}
PY=${PYTHON:-python3}
FP32_ONNX=${FP32_ONNX:-$OUT/resnet_cifar10.onnx}
FP16_ONNX=${FP16_ONNX:-$OUT/resnet_cifar10_fp16.onnx}
INT8_ONNX=${INT8_ONNX:-$OUT/resnet_quantized_cifar10_modified.onnx}

if ! command -v trtexec >/dev/null 2>&1; then
  echo "error: trtexec is not on PATH; run this inside the Docker image (docker/pytorch-tensorrt.Dockerfile) or add TensorRT's bin/ folder to PATH (with only pip's tensorrt, 'polygraphy convert' builds engines)" >&2
  exit 2
fi
for f in "$FP32_ONNX" "$INT8_ONNX"; do
  [ -f "$f" ] || { echo "error: $f does not exist; run resnet_torch.py and onnx_gs.py first" >&2; exit 2; }
done

# "[TensorRT v101300]" -> 10; "[TensorRT v110400]" -> 11
banner=$(trtexec --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -n 1 || true)
major=$(echo "${banner#TensorRT v}" | sed -E 's/^([0-9]+)[0-9]{4}$/\1/')
[ -n "$major" ] || major=$($PY -c 'import tensorrt; print(tensorrt.__version__.split(".")[0])' 2>/dev/null || echo 10)
echo "TensorRT major version: $major"

if [ -n "${MIN_SHAPES:-}" ]; then
  shape_flags=(--minShapes="$MIN_SHAPES" --optShapes="${OPT_SHAPES:-$MIN_SHAPES}" --maxShapes="${MAX_SHAPES:-$MIN_SHAPES}")
else
  shape_flags=(--shapes="${SHAPES:-input:1x3x32x32}")
fi

build() {  # name onnx [precision flags...]
  local name=$1 onnx=$2; shift 2
  local engine="$OUT/resnet_cifar10_${name}.engine" tmp="$OUT/.resnet_cifar10_${name}.engine.tmp"
  echo "building $engine from $onnx"
  if trtexec --onnx="$onnx" --saveEngine="$tmp" "${shape_flags[@]}" "$@" \
      --separateProfileRun --profilingVerbosity=detailed \
      --exportLayerInfo="$OUT/resnet_cifar10_${name}_layer_info.json" \
      --exportProfile="$OUT/resnet_cifar10_${name}_profile.json" \
      --verbose > "$OUT/resnet_cifar10_${name}_build.log" 2>&1; then
    mv "$tmp" "$engine"   # rename only a complete engine into place
    grep -E "Throughput|Latency: min|GPU Compute Time: min" "$OUT/resnet_cifar10_${name}_build.log" || true
  else
    rm -f "$tmp"
    echo "error: trtexec failed for $onnx; the last lines of $OUT/resnet_cifar10_${name}_build.log say why:" >&2
    tail -n 15 "$OUT/resnet_cifar10_${name}_build.log" >&2
    exit 1
  fi
}

if [ "$major" -ge 11 ]; then
  [ -f "$FP16_ONNX" ] || $PY -m eager2trt.fp16 --input "$FP32_ONNX" --output "$FP16_ONNX"
  build fp16 "$FP16_ONNX"
  build int8 "$INT8_ONNX"
else
  build fp16 "$FP32_ONNX" --fp16
  build int8 "$INT8_ONNX" --int8
fi
