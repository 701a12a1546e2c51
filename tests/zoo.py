"""Models people deploy to TensorRT that are not torchvision classifiers, written to the eager-mode contract
(QuantStub/DeQuantStub, FloatFunctional, fuse_model): tests/test_zoo.py runs each single-input / single-output
one through quantize_to_tensorrt and bench/zoo.py prints one table row per model. Small on purpose (8-16
channels, 16-32 px inputs) so the whole zoo runs in seconds on one core.

ZOO: name -> (constructor, one input's shape). MULTI_IO: models with two inputs or two outputs, defined here
for the pipeline's multi-I/O work, not yet run through it.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules, fuse_modules_qat

C = 8  # channels of every small model


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, act=nn.ReLU) -> nn.Sequential:
    """Conv + BatchNorm + activation, fused by `fuse_cbr` when the activation is a ReLU."""
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
                         act())


def fuse(model: nn.Module, names: list, is_qat=None) -> None:
    """torch.ao's fuse_modules in place, or fuse_modules_qat for quantization-aware training (as torchvision's)."""
    (fuse_modules_qat if is_qat else fuse_modules)(model, names, inplace=True)


def fuse_cbr(model: nn.Module, is_qat=None) -> None:
    """Fuse every cbr() block in place: conv+bn+relu, or conv+bn when its activation is not a ReLU."""
    blocks = [m for m in model.modules() if type(m) is nn.Sequential and len(m) == 3  # not a fused module
              and isinstance(m[0], nn.Conv2d) and isinstance(m[1], nn.BatchNorm2d)]
    for m in blocks:
        fuse(m, ["0", "1", "2"] if type(m[2]) is nn.ReLU else ["0", "1"], is_qat)


class Stubbed(nn.Module):
    """QuantStub -> body -> DeQuantStub; subclasses define `body(x)` and may override fuse_model."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()

    def forward(self, x):
        return self.dequant(self.body(self.quant(x)))

    def fuse_model(self, is_qat=None):
        """Fuse conv+bn(+relu) in place; numerics unchanged."""
        fuse_cbr(self, is_qat)


class Head(nn.Module):
    """Global average pool, flatten, linear: a classifier head."""

    def __init__(self, cin: int, classes: int = 4):
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class UNet(Stubbed):
    """Encoder-decoder with a ConvTranspose2d up-sampling and a skip concatenation; per-pixel class maps out."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.enc1, self.down = cbr(3, C), nn.MaxPool2d(2)
        self.enc2 = cbr(C, 2 * C)
        self.up = nn.ConvTranspose2d(2 * C, C, 2, stride=2)
        self.cat = FloatFunctional()
        self.dec = cbr(2 * C, C)
        self.out = nn.Conv2d(C, classes, 1)

    def body(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.down(e1))
        return self.out(self.dec(self.cat.cat([self.up(e2), e1], dim=1)))


class FPN(Stubbed):
    """Two-level feature pyramid: nearest up-sampling of the coarse level plus a lateral 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = cbr(3, C, stride=2), cbr(C, 2 * C, stride=2)
        self.lat1, self.lat2 = nn.Conv2d(C, C, 1), nn.Conv2d(2 * C, C, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.add = FloatFunctional()
        self.smooth = cbr(C, C)
        self.head = Head(C)

    def body(self, x):
        c1 = self.c1(x)
        c2 = self.c2(c1)
        p1 = self.add.add(self.lat1(c1), self.up(self.lat2(c2)))
        return self.head(self.smooth(p1))


class ASPP(Stubbed):
    """DeepLab's atrous pyramid: dilated convs concatenated, then bilinear up-sampling to the input size."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = cbr(3, C, stride=2)
        self.b1, self.b2, self.b3 = cbr(C, C, 1), cbr(C, C, dilation=2), cbr(C, C, dilation=3)
        self.cat = FloatFunctional()
        self.project = cbr(3 * C, C, 1)
        self.out = nn.Conv2d(C, classes, 1)

    def body(self, x):
        f = self.stem(x)
        f = self.project(self.cat.cat([self.b1(f), self.b2(f), self.b3(f)], dim=1))
        return F.interpolate(self.out(f), scale_factor=2, mode="bilinear", align_corners=False)


class SENet(Stubbed):
    """A squeeze-and-excitation block: pooled gate through a sigmoid, multiplied onto the features."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, C)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.relu, self.fc2 = nn.Conv2d(C, C // 2, 1), nn.ReLU(), nn.Conv2d(C // 2, C, 1)
        self.gate = nn.Sigmoid()
        self.mul = FloatFunctional()
        self.head = Head(C)

    def body(self, x):
        f = self.stem(x)
        g = self.gate(self.fc2(self.relu(self.fc1(self.squeeze(f)))))
        return self.head(self.mul.mul(f, g))

    def fuse_model(self, is_qat=None):
        fuse_cbr(self, is_qat)
        fuse(self, ["fc1", "relu"], is_qat)


class Conv1dNet(Stubbed):
    """A 1-D CNN on one-channel signals (N, 1, L): ECG or audio style."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(1, C, 5, padding=2, bias=False), nn.BatchNorm1d(C), nn.ReLU(),
                                      nn.MaxPool1d(2),
                                      nn.Conv1d(C, 2 * C, 3, padding=1, bias=False), nn.BatchNorm1d(2 * C), nn.ReLU())
        self.pool, self.fc = nn.AdaptiveAvgPool1d(1), nn.Linear(2 * C, classes)

    def body(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def fuse_model(self, is_qat=None):
        fuse(self.features, [["0", "1", "2"], ["4", "5", "6"]], is_qat)


class Conv1dAutoencoder(Stubbed):
    """A 1-D denoising autoencoder on one-channel signals: strided Conv1d down, ConvTranspose1d up."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv1d(1, C, 4, stride=2, padding=1), nn.ReLU())
        self.dec = nn.ConvTranspose1d(C, 1, 4, stride=2, padding=1)

    def body(self, x):
        return self.dec(self.enc(x))

    def fuse_model(self, is_qat=None):
        fuse(self.enc, ["0", "1"], is_qat)


class SuperResolution(Stubbed):
    """ESPCN-style x2 super-resolution on the luma channel (N, 1, H, W): convs, then PixelShuffle."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = cbr(1, C, 5), cbr(C, C)
        self.c3 = nn.Conv2d(C, 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def body(self, x):
        return self.shuffle(self.c3(self.c2(self.c1(x))))


class ActivationNet(Stubbed):
    """Two conv + BN + `act` blocks and a classifier head: one model per activation a deployer uses."""

    def __init__(self, act):
        super().__init__()
        self.b1, self.b2 = cbr(3, C, act=act), cbr(C, 2 * C, stride=2, act=act)
        self.head = Head(2 * C)

    def body(self, x):
        return self.head(self.b2(self.b1(x)))


class BatchNormAfterAdd(Stubbed):
    """A residual add followed by a standalone BatchNorm2d (pre-activation style): nothing to fuse it into."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = cbr(3, C), cbr(C, C, act=nn.Identity)  # conv + bn into the add, as in ResNet
        self.add = FloatFunctional()
        self.bn, self.relu = nn.BatchNorm2d(C), nn.ReLU()
        self.head = Head(C)

    def body(self, x):
        f = self.stem(x)
        return self.head(self.relu(self.bn(self.add.add(self.conv(f), f))))


class PoolDropoutUpsample(Stubbed):
    """Average pooling, Dropout (gone in eval) and a bilinear nn.Upsample module before the head."""

    def __init__(self):
        super().__init__()
        self.stem, self.avg, self.drop = cbr(3, C), nn.AvgPool2d(2), nn.Dropout(0.1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.head = Head(C)

    def body(self, x):
        return self.head(self.up(self.drop(self.avg(self.stem(x)))))


class GroupNormTanh(Stubbed):
    """A conv followed by GroupNorm (detection heads) and a Tanh: both kept in float by the layer table."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.act = nn.Conv2d(3, C, 3, padding=1), nn.GroupNorm(2, C), nn.Tanh()
        self.head = Head(C)

    def body(self, x):
        return self.head(self.act(self.norm(self.conv(x))))


class SqueezeNet(Stubbed):
    """A classifier that drops the pooled spatial dimensions with `.squeeze()` on the quantized tensor."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = cbr(3, C)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(C, classes)

    def body(self, x):
        return self.fc(self.pool(self.stem(x)).squeeze(-1).squeeze(-1))


class WithTargets(Stubbed):
    """A model whose forward takes optional training targets (`forward(x, targets=None)`) and returns logits."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = cbr(3, C)
        self.head = Head(C, classes)

    def forward(self, x, targets=None):
        out = self.dequant(self.head(self.stem(self.quant(x))))
        return out if targets is None else F.cross_entropy(out, targets)


def _relu6():
    return ActivationNet(nn.ReLU6)


def _mish():
    return ActivationNet(nn.Mish)


ZOO = {
    "unet_convtranspose": (UNet, (3, 16, 16)),
    "fpn_nearest_add": (FPN, (3, 16, 16)),
    "aspp_bilinear_cat": (ASPP, (3, 16, 16)),
    "se_sigmoid_mul": (SENet, (3, 16, 16)),
    "conv1d_1ch": (Conv1dNet, (1, 64)),
    "conv1d_autoencoder": (Conv1dAutoencoder, (1, 32)),
    "superres_pixelshuffle": (SuperResolution, (1, 16, 16)),
    "vgg_relu6": (_relu6, (3, 16, 16)),
    "hardswish": (lambda: ActivationNet(nn.Hardswish), (3, 16, 16)),
    "leakyrelu": (lambda: ActivationNet(lambda: nn.LeakyReLU(0.1)), (3, 16, 16)),
    "gelu": (lambda: ActivationNet(nn.GELU), (3, 16, 16)),
    "elu": (lambda: ActivationNet(nn.ELU), (3, 16, 16)),
    "silu": (lambda: ActivationNet(nn.SiLU), (3, 16, 16)),
    "mish": (_mish, (3, 16, 16)),
    "batchnorm_after_add": (BatchNormAfterAdd, (3, 16, 16)),
    "avgpool_dropout_upsample": (PoolDropoutUpsample, (3, 16, 16)),
    "groupnorm_tanh": (GroupNormTanh, (3, 16, 16)),
    "squeeze": (SqueezeNet, (3, 16, 16)),
    "forward_targets": (WithTargets, (3, 16, 16)),
}


class TwoOutputDetector(Stubbed):
    """A single-level detector head: class logits and box deltas per anchor (two outputs)."""

    def __init__(self, classes: int = 3, anchors: int = 2):
        super().__init__()
        self.dequant_box = DeQuantStub()
        self.backbone = nn.Sequential(cbr(3, C, stride=2), cbr(C, C))
        self.cls, self.box = nn.Conv2d(C, anchors * classes, 1), nn.Conv2d(C, anchors * 4, 1)

    def forward(self, x):
        f = self.backbone(self.quant(x))
        return self.dequant(self.cls(f)), self.dequant_box(self.box(f))


class TwoInputNet(Stubbed):
    """Two images (e.g. RGB and depth) through their own stems, concatenated: two inputs, one output."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.quant_depth = QuantStub()
        self.rgb, self.depth = cbr(3, C), cbr(1, C)
        self.cat = FloatFunctional()
        self.head = Head(2 * C, classes)

    def forward(self, rgb, depth):
        f = self.cat.cat([self.rgb(self.quant(rgb)), self.depth(self.quant_depth(depth))], dim=1)
        return self.dequant(self.head(f))


MULTI_IO = {"detector_two_outputs": (TwoOutputDetector, [(3, 16, 16)]),
            "two_inputs": (TwoInputNet, [(3, 16, 16), (1, 16, 16)])}


def build(name: str, seed: int = 0) -> nn.Module:
    """Zoo model `name`, seeded random weights, BatchNorm statistics made non-trivial, in eval mode."""
    torch.manual_seed(seed)
    model = (ZOO.get(name) or MULTI_IO[name])[0]()
    for m in model.modules():  # random running statistics so that fusing BatchNorm changes the weights
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def calibration(name: str, batches: int = 2, batch: int = 4, seed: int = 1) -> list:
    """Seeded random normalized inputs of the model's input shape (a tuple per batch for several inputs)."""
    g = torch.Generator().manual_seed(seed)
    if name in MULTI_IO:
        shapes = MULTI_IO[name][1]
        make = (lambda: tuple(torch.randn(batch, *s, generator=g) for s in shapes)) if len(shapes) > 1 else \
            (lambda: torch.randn(batch, *shapes[0], generator=g))
        return [make() for _ in range(batches)]
    return [torch.randn(batch, *ZOO[name][1], generator=g) for _ in range(batches)]


def input_words(name: str) -> str:
    """The model's input shape(s) as a table writes them: 3x16x16, or 3x16x16 + 1x16x16."""
    shapes = MULTI_IO[name][1] if name in MULTI_IO else [ZOO[name][1]]
    return " + ".join("x".join(map(str, s)) for s in shapes)
