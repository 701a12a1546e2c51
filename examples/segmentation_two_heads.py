"""A model with two outputs (a dict: per-pixel class logits and a depth map), label maps, and held-out data streamed
from a DataLoader: what a segmentation or multi-task user hands to quantize_to_tensorrt.

    python examples/segmentation_two_heads.py [OUTPUT_DIR]

The labels score the first output per pixel (top-1 and mIoU); the depth head has no labels, so its figure is its
distance from FP32 (checks exact_vs_fp32 / fast_vs_fp32). Every check covers both outputs. The images here are
random and the labels are what the FP32 model predicts (FP32 scores 1.0 by construction); use your own data.
"""

import sys

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules
from torch.utils.data import DataLoader, TensorDataset

from eager2trt.pipeline import quantize_to_tensorrt


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TwoHeadUNet(nn.Module):
    """Encoder, ConvTranspose decoder with a skip concatenation, and two heads (one DeQuantStub each)."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.quant, self.dequant_seg, self.dequant_depth = QuantStub(), DeQuantStub(), DeQuantStub()
        self.enc1, self.enc2 = conv_bn_relu(3, 16), conv_bn_relu(16, 32, stride=2)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.cat = FloatFunctional()
        self.dec = conv_bn_relu(32, 16)
        self.seg, self.depth = nn.Conv2d(16, classes, 1), nn.Conv2d(16, 1, 1)

    def forward(self, x):
        e1 = self.enc1(self.quant(x))
        f = self.dec(self.cat.cat([self.up(self.enc2(e1)), e1], dim=1))
        return {"seg": self.dequant_seg(self.seg(f)), "depth": self.dequant_depth(self.depth(f))}

    def fuse_model(self, is_qat=None):
        for block in (self.enc1, self.enc2, self.dec):
            fuse_modules(block, ["0", "1", "2"], inplace=True)


def main(output_dir: str = "segmentation_out"):
    torch.manual_seed(0)
    model = TwoHeadUNet().eval()  # in real use: your trained FP32 weights
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(4)]  # in real use: real images
    images = torch.randn(64, 3, 32, 32, generator=g)
    with torch.no_grad():
        label_maps = model(images)["seg"].argmax(1)  # (N, H, W): one class per pixel
    held_out = DataLoader(TensorDataset(images, label_maps), batch_size=16)  # read on each pass, never held
    # random weights leave many near-tied pixels, which INT8 flips: a 2-point budget (trained models: the default 1)
    result = quantize_to_tensorrt(model, calibration, output_dir, data=held_out, name="two_head_unet",
                                  accuracy_budget=2.0)
    for model_name, score in result.scores.items():
        print(f"{model_name}: per-pixel top-1 {score['top1']:.4f}, mIoU {score['miou']:.4f}")
    for name in ("equivalence", "exact_vs_fp32"):
        check = result.check(name)
        per_output = {k: round(v.get("max_abs_diff", v.get("relative_distance")), 4)
                      for k, v in check.figures["outputs"].items()}
        print(f"{name} per output: {per_output}")
    print(f"TensorRT-ready ONNX: {result.paths.int8_onnx_modified} (outputs seg, depth)")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:])
