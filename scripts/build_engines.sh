#!/usr/bin/env bash
# Build the FP16 engine and the INT8 engines of both Q/DQ graphs with trtexec, for TensorRT 10 or 11, and
# summarize from each engine's layer info what TensorRT fused.
#
#   scripts/build_engines.sh            # batch 1 (SHAPES=input:1x3x32x32)
#   SHAPES=input:64x3x32x32 scripts/build_engines.sh
#   MIN_SHAPES=input:1x3x32x32 OPT_SHAPES=input:64x3x32x32 MAX_SHAPES=input:256x3x32x32 scripts/build_engines.sh
#
# Engines: resnet_cifar10_fp16.engine, resnet_cifar10_int8.engine (exact graph, onnx_gs.py's default) and,
# when onnx_gs.py --mode fast has written its graph, resnet_cifar10_int8_fast.engine.
# TensorRT 10: --fp16 on the FP32 ONNX; --int8 --fp16 on the Q/DQ graphs (Q/DQ fix the INT8 layers; --fp16 lets
# the layers outside them run FP16 instead of FP32); --separateProfileRun.
# TensorRT 11: every network is strongly typed and the precision flags are gone
# (docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-10x-to-11x-trtexec.html), so the
# FP16 engine is built from an FP16 ONNX (python -m eager2trt.cli.fp16) and the Q/DQ graphs carry their own types;
# --separateProfileRun is a deprecated no-op there and is not passed.
set -euo pipefail
OUT=${OUTPUT_DIR:-saved_models}
PY=${PYTHON:-python3}
FP32_ONNX=${FP32_ONNX:-$OUT/resnet_cifar10.onnx}
FP16_ONNX=${FP16_ONNX:-$OUT/resnet_cifar10_fp16.onnx}
INT8_ONNX=${INT8_ONNX:-$OUT/resnet_quantized_cifar10_modified.onnx}
FAST_ONNX=${FAST_ONNX:-$OUT/resnet_quantized_cifar10_fast.onnx}

# NGC TensorRT images put trtexec in one of these without always adding it to PATH
for dir in /opt/tensorrt/bin /usr/src/tensorrt/bin; do
  command -v trtexec >/dev/null 2>&1 || [ ! -x "$dir/trtexec" ] || PATH="$dir:$PATH"
done
if ! command -v trtexec >/dev/null 2>&1; then
  echo "error: trtexec is not on PATH, in /opt/tensorrt/bin or in /usr/src/tensorrt/bin; run this inside the Docker image (docker/pytorch-tensorrt.Dockerfile) or add TensorRT's bin/ folder to PATH (with only pip's tensorrt, 'polygraphy convert' builds engines)" >&2
  exit 2
fi
for f in "$FP32_ONNX" "$INT8_ONNX"; do
  [ -f "$f" ] || { echo "error: $f does not exist; run resnet_torch.py and onnx_gs.py first" >&2; exit 2; }
done

# Hold the output folder's lock (the file eager2trt.artifacts.output_lock flocks), so two builds into one folder
# cannot interleave; a parent that holds it (scripts/run_pipeline.sh) says so in EAGER2TRT_LOCKED_DIRS.
mkdir -p "$OUT" 2>/dev/null || { echo "error: cannot create the output directory $OUT; set OUTPUT_DIR to a writable folder" >&2; exit 2; }
OUT_REAL=$(cd "$OUT" && pwd -P)
case ":${EAGER2TRT_LOCKED_DIRS:-}:" in
  *":$OUT_REAL:"*) ;;  # our parent holds it for us
  *)
    if ! exec 8>>"$OUT/.eager2trt.lock"; then
      echo "error: output directory $OUT is not writable (cannot open $OUT/.eager2trt.lock); set OUTPUT_DIR to a writable folder" >&2
      exit 2
    fi
    if ! flock -n 8; then
      echo "error: output directory $OUT is in use by another run (it holds $OUT/.eager2trt.lock); wait for that run to finish or set OUTPUT_DIR to another folder" >&2
      exit 2
    fi
    export EAGER2TRT_LOCKED_DIRS="$OUT_REAL${EAGER2TRT_LOCKED_DIRS:+:$EAGER2TRT_LOCKED_DIRS}"
    ;;
esac
# Temporary files: unique names (mktemp) in the output folder, in the pattern .<name>.<pid>.<8 chars>.tmp that
# the Python tools recognise, so a later write there removes what a killed build left; ours go on any exit.
# Cleanup goes by that pattern and this shell's pid, so a signal between mktemp and any bookkeeping leaks nothing.
cleanup() { rm -f "$OUT"/.*."$$".????????.tmp; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
temp_for() {  # final path -> a new unique temporary file beside it
  local t
  t=$(mktemp --suffix=.tmp "$(dirname "$1")/.$(basename "$1").$$.XXXXXXXX") || {
    echo "error: cannot create a temporary file in $(dirname "$1"); free space there or set OUTPUT_DIR to another folder" >&2
    exit 2
  }
  echo "$t"
}

# "[TensorRT v101300]" -> 10; "[TensorRT v110100]" -> 11
banner=$(trtexec --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -n 1 || true)
major=$(echo "${banner#TensorRT v}" | sed -E 's/^([0-9]+)[0-9]{4}$/\1/')
[ -n "$major" ] || major=$($PY -c 'import tensorrt; print(tensorrt.__version__.split(".")[0])' 2>/dev/null || echo 10)
echo "TensorRT major version: $major ($(command -v trtexec))"

if [ -n "${MIN_SHAPES:-}" ]; then
  shape_flags=(--minShapes="$MIN_SHAPES" --optShapes="${OPT_SHAPES:-$MIN_SHAPES}" --maxShapes="${MAX_SHAPES:-$MIN_SHAPES}")
else
  shape_flags=(--shapes="${SHAPES:-input:1x3x32x32}")
fi
profile_flags=(--profilingVerbosity=detailed)
[ "$major" -ge 11 ] || profile_flags+=(--separateProfileRun)

layer_infos=()
place() {  # tmp final: rename a written temporary into place, or remove a stale final file when none was written
  if [ -s "$1" ]; then mv "$1" "$2"; else rm -f "$2"; fi
}
build() {  # name onnx [precision flags...]
  local name=$1 onnx=$2; shift 2
  local engine="$OUT/resnet_cifar10_${name}.engine" info="$OUT/resnet_cifar10_${name}_layer_info.json"
  local profile="$OUT/resnet_cifar10_${name}_profile.json" log="$OUT/resnet_cifar10_${name}_build.log"
  local tmp tmp_info tmp_profile
  tmp=$(temp_for "$engine"); tmp_info=$(temp_for "$info"); tmp_profile=$(temp_for "$profile")
  echo "building $engine from $onnx"
  if trtexec --onnx="$onnx" --saveEngine="$tmp" "${shape_flags[@]}" "$@" "${profile_flags[@]}" \
      --exportLayerInfo="$tmp_info" --exportProfile="$tmp_profile" --verbose > "$log" 2>&1; then
    if [ ! -s "$tmp" ]; then
      tail -n 15 "$log" >&2
      echo "error: trtexec exited 0 for $onnx but wrote an empty engine; $log (its last lines above) says why" >&2
      exit 1
    fi
    # rename only complete files into place, the engine last; an older layer info or profile never stays beside
    # a new engine. mktemp made them 0600: give them the permissions a plain write would have.
    chmod "$(printf '%04o' $((0666 & ~0$(umask))))" "$tmp" "$tmp_info" "$tmp_profile"
    place "$tmp_info" "$info"
    place "$tmp_profile" "$profile"
    mv "$tmp" "$engine"
    grep -E "Throughput|Latency: min|GPU Compute Time: min" "$log" || true
    [ ! -f "$info" ] || layer_infos+=("$info")
  else
    tail -n 15 "$log" >&2
    echo "error: trtexec failed for $onnx; its log $log (last lines above) says why" >&2
    exit 1
  fi
}

if [ "$major" -ge 11 ]; then
  fp16_flags=() int8_flags=()
  # re-convert when the FP32 ONNX was re-exported after the FP16 one was made
  if [ ! -f "$FP16_ONNX" ] || [ "$FP16_ONNX" -ot "$FP32_ONNX" ]; then
    $PY -m eager2trt.cli.fp16 --input "$FP32_ONNX" --output "$FP16_ONNX"
  fi
  build fp16 "$FP16_ONNX"
else
  fp16_flags=(--fp16) int8_flags=(--int8 --fp16)
  build fp16 "$FP32_ONNX" "${fp16_flags[@]}"
fi
build int8 "$INT8_ONNX" "${int8_flags[@]}"
if [ -f "$FAST_ONNX" ]; then
  build int8_fast "$FAST_ONNX" "${int8_flags[@]}"
else
  echo "note: $FAST_ONNX does not exist (onnx_gs.py --mode fast writes it); the fast INT8 engine was not built"
fi

# The fusion check: ResNet18's exact graph should leave its 8 residual Adds as separate pointwise layers,
# the fast graph none (onnx_gs.py's lint predicts both). A summary that cannot be read does not undo the build.
echo "fusion (expected for ResNet18: int8 8 separate pointwise layers, int8_fast 0):"
[ ${#layer_infos[@]} -eq 0 ] || $PY -m eager2trt.cli.layer_info "${layer_infos[@]}" || echo "warning: the layer info above could not be summarized" >&2
