"""The contract between stages: artifact names, the model's input, and every tolerance, in one place.

The CLIs, the pipeline, the benchmarks and the tests read these; nothing else types them.
"""

from pathlib import Path

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
IMAGE_SHAPE = (3, 32, 32)  # CHW of one CIFAR-10 image
NUM_CLASSES = 10
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


def image_batch_shape(batch: int = 1) -> tuple:
    """NCHW shape of a batch of model inputs."""
    return (batch, *IMAGE_SHAPE)


class ArtifactPaths:
    """Every artifact's path inside one output folder, under the contract's names."""

    def __init__(self, output_dir: Path):
        d = self.output_dir = Path(output_dir)
        self.fp32_state = d / FP32_STATE
        self.train_state = d / TRAIN_STATE
        self.training_curve = d / TRAINING_CURVE
        self.training_history = d / TRAINING_HISTORY
        self.fp32_onnx = d / FP32_ONNX
        self.fp16_onnx = d / FP16_ONNX
        self.int8_onnx = d / INT8_ONNX
        self.int8_torchscript = d / INT8_TORCHSCRIPT
        self.int8_onnx_modified = d / INT8_ONNX_MODIFIED
        self.int8_onnx_fast = d / INT8_ONNX_FAST
        self.int8_onnx_fallback = d / INT8_ONNX_FALLBACK
        self.metrics = d / METRICS
