"""Bring your own model: a small eager-mode quantizable CNN to a linted, verified TensorRT-ready ONNX.

    python examples/bring_your_own_model.py [OUTPUT_DIR]

The model follows torchvision's quantizable-model contract: QuantStub/DeQuantStub around the float
forward, a FloatFunctional for the residual addition, separate ReLU modules, and `fuse_model()`.
"""

import sys

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules

from eager2trt.pipeline import quantize_to_tensorrt


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.add = FloatFunctional()  # a quantizable residual add
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(self.quant(x))
        x = self.relu(self.add.add(self.conv2(self.conv1(x)), x))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))

    def fuse_model(self, is_qat=None):
        """Fuse conv+bn(+relu) in place; numerics unchanged (checked by the pipeline)."""
        for block in (self.stem, self.conv1):
            fuse_modules(block, ["0", "1", "2"], inplace=True)
        fuse_modules(self.conv2, ["0", "1"], inplace=True)


def main(output_dir: str = "byom_out"):
    torch.manual_seed(0)
    model = TinyResNet().eval()  # in real use: your trained FP32 weights
    calibration = [torch.randn(16, 3, 32, 32) for _ in range(4)]  # in real use: a few hundred real images
    result = quantize_to_tensorrt(model, calibration, output_dir)  # in real use: images=, labels= held-out data
    exact = result.graphs["exact"]
    lint = [c for c in exact.checks if c.name.startswith("lint.")]
    equivalence = next(c for c in exact.checks if c.name == "equivalence")
    print(f"checks: all {len(result.checks)} passed" if all(result.checks) else "checks: some failed")
    print(f"lint: {sum(c.passed for c in lint)}/{len(lint)} rules pass; max abs difference to the export "
          f"{equivalence.value:.3g}; rewrites {exact.report['rewrites']}")
    print(f"TensorRT-ready ONNX: {result.paths.int8_onnx_modified} (exact), {result.paths.int8_onnx_fast} (fast)")
    for note in result.notes:
        print(f"note: {note}")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:])
