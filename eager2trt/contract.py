"""The contract between stages: artifact names, the model's input, and every tolerance, in one place.

The CLIs, the pipeline, the benchmarks and the tests read these; nothing else types them.
"""

import re
from pathlib import Path
from typing import Optional

from .errors import PipelineError

# --- artifact names: the reference recipe's, as defaults -------------------------------------------
OUTPUT_DIR = Path("saved_models")
DATA_DIR = Path("data")
FP32_STATE = "resnet_cifar10.pt"
TRAIN_STATE = "resnet_cifar10.train-state.pt"
TRAINING_CURVE = "training_curve.png"
TRAINING_HISTORY = "training_curve.json"  # the per-epoch record the curve is drawn from
FP32_ONNX = "resnet_cifar10.onnx"
FP16_ONNX = "resnet_cifar10_fp16.onnx"
INT8_ONNX = "resnet_quantized_cifar10.onnx"
INT8_TORCHSCRIPT = "resnet_quantized_cifar10.pt"
INT8_ONNX_MODIFIED = "resnet_quantized_cifar10_modified.onnx"  # exact surgery (the reference's name)
INT8_ONNX_FAST = "resnet_quantized_cifar10_fast.onnx"  # fast placement
# automatic fallback: the fewest layers kept in float within the accuracy budget (graph/fallback.py)
INT8_ONNX_FALLBACK = "resnet_quantized_cifar10_fallback.onnx"
FP16_ENGINE = "resnet_cifar10_fp16.engine"
INT8_ENGINE = "resnet_cifar10_int8.engine"
INT8_FAST_ENGINE = "resnet_cifar10_int8_fast.engine"
METRICS = "metrics.json"

# --- the model's input and output --------------------------------------------------------------------
INPUT_NAME, OUTPUT_NAME = "input", "output"
OPSET = 16

# --- tolerances (each with where it comes from) -----------------------------------------------------
FUSE_RTOL, FUSE_ATOL = 1e-3, 1e-6  # fused vs unfused model: the reference's check
EQUIVALENCE_ATOL = 1e-5  # exact surgery vs the export, max abs logit difference (measured 0.0 on ResNet18)
ACCURACY_MATCH = 0.001  # an engine/graph matches its PyTorch model within 0.1 points of test accuracy
FP16_ACCURACY_TOLERANCE = 0.001  # FP16 ONNX vs FP32 ONNX, 0.1 points
# fast mode is held to accuracy, not bit-exactness: top-1 >= PyTorch INT8 minus this, per high precision
# (fp16: onnxruntime runs QuantizeLinear on FP16 inputs in FP16 arithmetic; measured -0.24 points on ResNet18)
ACCURACY_BUDGET = 1.0  # points of top-1 INT8 may lose against FP32 on held-out images before a run fails
FAST_ACCURACY_DROP = {"fp32": 0.001, "fp16": 0.003}
FAST_ERROR_RATIO = 1.25  # without data: fast graph's logit error vs FP32 within this multiple of the exact graph's
# a graph on the GPU (runtime/torch_graph.py) vs onnxruntime's CPU run of it, on the same samples: their relative
# distance at most GPU_CPU_RATIO of the graph's relative distance from FP32, an INT8 error under GPU_CPU_ERROR_FLOOR
# counting as that, and argmax agreement >= AGREEMENT_MIN. Float kernels that differ in the last bit (sums in
# another order, sigmoid) round a value at a quantization step's midpoint the other way, and on a deep network each
# such step moves the values after it: measured on ResNet50 (1,000 classes, 224 px, random weights, 32 images), the
# exact graph in PyTorch on the CPU vs onnxruntime 2.02%, on an H100 vs onnxruntime 2.04%, in float64 2.04%, its
# INT8 error 2.3%: two faithful CPU runs differ by about INT8's own error, so that is the bound
GPU_CPU_RATIO, GPU_CPU_ERROR_FLOOR = 1.0, 0.01
# PyTorch INT8 vs its Q/DQ graph (eager2trt.checks.agreement, the rule in checks/agreement_rule.py, measurements in
# docs/agreement.md). Real images: argmax agreement at least AGREEMENT_MIN (shipped ResNet18, qnnpack: 0.9938), or
# the distance rule below. Measured with qnnpack on random-init models at 96 px and the trained ResNet18: a faithful
# engine's distance ratio |PyTorch - graph| / min(|graph - FP32|, |PyTorch - FP32|) reaches 1.29 (ResNeXt101:
# rounding steps carried to the logits make the two INT8 results as far apart as two independent quantizations),
# graphs of another model 4.4-68; the balance (worse INT8-to-FP32 distance over the better) of faithful engines
# 0.91-1.25, of the drifting onednn-without-VNNI 1.72-7.9. Another calibration of the same weights (ratio 0.92-1.71)
# is told apart by its scales, not its logits (the scale_provenance check).
AGREEMENT_MIN = 0.99
# On the small random models the tests use, a faithful engine stays below this stricter ratio (a test figure).
DISTANCE_RATIO_MAX = 1.0
AGREEMENT_RATIO_MAX = 2.0
AGREEMENT_BALANCE_MAX = 1.5
# A given INT8 model with affine activations, re-derived in the symmetric scheme (eager/requantize.py): its logit
# distance to FP32 over the given model's. Symmetric int8 gives a non-negative (post-ReLU) activation 128 steps where
# affine uint8 had 256, so each such activation's rounding error at most doubles; beyond 2x the re-derivation lost
# more than the scheme change explains.
REQUANTIZATION_RATIO_MAX = 2.0


def artifact_names(name: Optional[str] = None) -> dict:
    """Every artifact's file name for a model called `name`: None gives the reference's names above (the CIFAR-10
    ResNet18 job's); a name N gives N.pt, N.onnx, N_quantized.onnx, N_quantized_modified.onnx, ... so that runs of
    other models never write files named for the reference's ResNet on CIFAR-10."""
    if name is None:
        return dict(REFERENCE_NAMES)
    check_name(name)
    q = f"{name}_quantized"
    return {"fp32_state": f"{name}.pt", "train_state": f"{name}.train-state.pt", "training_curve": TRAINING_CURVE,
            "training_history": TRAINING_HISTORY, "fp32_onnx": f"{name}.onnx", "fp16_onnx": f"{name}_fp16.onnx",
            "int8_onnx": f"{q}.onnx", "int8_torchscript": f"{q}.pt", "int8_onnx_modified": f"{q}_modified.onnx",
            "int8_onnx_fast": f"{q}_fast.onnx", "int8_onnx_fallback": f"{q}_fallback.onnx", "metrics": METRICS}


REFERENCE_NAMES = {"fp32_state": FP32_STATE, "train_state": TRAIN_STATE, "training_curve": TRAINING_CURVE,
                   "training_history": TRAINING_HISTORY, "fp32_onnx": FP32_ONNX, "fp16_onnx": FP16_ONNX,
                   "int8_onnx": INT8_ONNX, "int8_torchscript": INT8_TORCHSCRIPT,
                   "int8_onnx_modified": INT8_ONNX_MODIFIED, "int8_onnx_fast": INT8_ONNX_FAST,
                   "int8_onnx_fallback": INT8_ONNX_FALLBACK, "metrics": METRICS}
# what one quantize_to_tensorrt run writes: an earlier run's files are kept aside until this one completes
RUN_ARTIFACT_KEYS = ("fp32_onnx", "int8_onnx", "int8_torchscript", "int8_onnx_modified", "int8_onnx_fast",
                     "int8_onnx_fallback", "fp16_onnx", "metrics")


def check_name(name: str) -> str:
    """Raise unless `name` can prefix file names: letters, digits, '.', '_' and '-', not starting with '.' or '-'."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", str(name)):
        raise PipelineError(f"artifact name {name!r} cannot prefix file names; use letters, digits, '_', '.' and '-' "
                            f"(not starting with '.' or '-'), e.g. mobilenet_v2")
    return name


class ArtifactPaths:
    """Every artifact's path inside one output folder: the reference's names, or those of a model called `name`."""

    def __init__(self, output_dir: Path, name: Optional[str] = None):
        d = self.output_dir = Path(output_dir)
        self.name = name
        for key, file_name in artifact_names(name).items():
            setattr(self, key, d / file_name)

    def run_artifacts(self) -> tuple:
        """The file names one quantize_to_tensorrt run writes (pipeline.fresh_run keeps earlier ones aside)."""
        return tuple(getattr(self, key).name for key in RUN_ARTIFACT_KEYS)
