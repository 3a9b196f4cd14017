"""Networks of the public on-device measurements, written from their papers (no weights: latency does not depend on
them). Batch norms are folded into the convolutions' biases, as every converter folds them (coremltools
fuse_conv_batchnorm, the TFLite converter, onnxruntime ConvBNFusion), so each conv is written with a bias instead.

- ResNet-50: He et al., "Deep Residual Learning for Image Recognition" (arXiv 1512.03385), Table 1, bottleneck blocks
  with the stride on the 3x3 conv (the torchvision layout Apple's table used).
- MobileNetV2: Sandler et al., arXiv 1801.04381, Table 2 (width 1.0, ReLU6).
- MobileNetV3-Small: Howard et al., "Searching for MobileNetV3" (arXiv 1905.02244), Table 2 (hard-swish, squeeze-and-
  excite with hard-sigmoid, SE width rounded to a multiple of 8 as in the reference implementation the paper cites).
- MobileViTv2 (width 1.0): Mehta and Rastegari, "Separable Self-attention for Mobile Vision Transformers" (arXiv
  2206.02680): MobileNetV2 blocks (expansion 2) and, in its last three stages, MobileViTv2 blocks (depthwise 3x3 and
  pointwise local representation, 2x2 patches, pre-norm separable self-attention and a 2x feed-forward, with
  group norm over one group) of widths 128, 192, 256 and 2, 4, 3 attention blocks; 256x256 input.
"""

from __future__ import annotations

from torch import nn


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=True)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(conv(cin, width, 1), conv(width, width, 3, stride), conv(width, cout, 1, act=None))
        self.shortcut = conv(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def resnet50(classes: int = 1000) -> nn.Module:
    layers, cin = [conv(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(blocks):
            layers.append(Bottleneck(cin, width, stride if index == 0 else 1))
            cin = width * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: float, kernel: int = 3,
                 act: type[nn.Module] = nn.ReLU6, squeeze: bool = False, expanded: int | None = None):
        super().__init__()
        hidden = expanded or int(round(cin * expand))
        layers = [] if hidden == cin else [conv(cin, hidden, 1, act=act)]
        layers.append(conv(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if squeeze:
            layers.append(SqueezeExcite(hidden))
        layers.append(conv(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        squeezed = _divisible(channels / 4)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.ReLU(),
                                   nn.Conv2d(squeezed, channels, 1), nn.Hardsigmoid())

    def forward(self, x):
        return x * self.scale(x)


def mobilenet_v2(classes: int = 1000) -> nn.Module:
    layers, cin = [conv(3, 32, 3, 2, act=nn.ReLU6)], 32
    for expand, cout, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                                          (6, 160, 3, 2), (6, 320, 1, 1)):
        for index in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand))
            cin = cout
    layers += [conv(cin, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes)]
    return nn.Sequential(*layers)


# MobileNetV3-Small, Table 2: kernel, expanded width, output width, squeeze-excite, activation, stride
V3_SMALL = ((3, 16, 16, True, nn.ReLU, 2), (3, 72, 24, False, nn.ReLU, 2), (3, 88, 24, False, nn.ReLU, 1),
            (5, 96, 40, True, nn.Hardswish, 2), (5, 240, 40, True, nn.Hardswish, 1), (5, 240, 40, True, nn.Hardswish, 1),
            (5, 120, 48, True, nn.Hardswish, 1), (5, 144, 48, True, nn.Hardswish, 1), (5, 288, 96, True, nn.Hardswish, 2),
            (5, 576, 96, True, nn.Hardswish, 1), (5, 576, 96, True, nn.Hardswish, 1))


def mobilenet_v3_small(classes: int = 1000) -> nn.Module:
    layers, cin = [conv(3, 16, 3, 2, act=nn.Hardswish)], 16
    for kernel, expanded, cout, squeeze, act, stride in V3_SMALL:
        layers.append(InvertedResidual(cin, cout, stride, 0, kernel, act, squeeze, expanded))
        cin = cout
    layers += [conv(cin, 576, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(576, 1024),
               nn.Hardswish(), nn.Linear(1024, classes)]
    return nn.Sequential(*layers)


class SeparableSelfAttention(nn.Module):
    """A query of one channel, softmax over the patches' positions, a context vector, and ReLU(values) scaled by it."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.qkv = nn.Conv2d(width, 1 + 2 * width, 1)
        self.out = nn.Conv2d(width, width, 1)

    def forward(self, x):
        query, key, value = self.qkv(x).split([1, self.width, self.width], dim=1)
        scores = query.softmax(dim=-1)
        context = (key * scores).sum(dim=-1, keepdim=True)
        return self.out(value.relu() * context)


class AttentionBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm1, self.attention = nn.GroupNorm(1, width), SeparableSelfAttention(width)
        self.norm2 = nn.GroupNorm(1, width)
        self.ffn = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.SiLU(), nn.Conv2d(2 * width, width, 1))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MobileViTv2Block(nn.Module):
    PATCH = 2

    def __init__(self, channels: int, width: int, blocks: int):
        super().__init__()
        self.local = nn.Sequential(conv(channels, channels, 3, groups=channels, act=nn.SiLU), nn.Conv2d(channels, width, 1, bias=False))
        self.globals = nn.Sequential(*(AttentionBlock(width) for _ in range(blocks)), nn.GroupNorm(1, width))
        self.project = conv(width, channels, 1, act=None)

    def forward(self, x):
        y = self.local(x)
        batch, width, height, breadth = y.shape
        p = self.PATCH
        patches = y.reshape(batch, width, height // p, p, breadth // p, p).permute(0, 1, 3, 5, 2, 4)
        patches = self.globals(patches.reshape(batch, width, p * p, -1))
        y = patches.reshape(batch, width, p, p, height // p, breadth // p).permute(0, 1, 4, 2, 5, 3)
        return self.project(y.reshape(batch, width, height, breadth))


def mobilevit_v2(classes: int = 1000) -> nn.Module:
    layers = [conv(3, 32, 3, 2, act=nn.SiLU), InvertedResidual(32, 64, 1, 2, act=nn.SiLU)]
    layers += [InvertedResidual(64, 128, 2, 2, act=nn.SiLU), InvertedResidual(128, 128, 1, 2, act=nn.SiLU)]
    cin = 128
    for cout, width, blocks in ((256, 128, 2), (384, 192, 4), (512, 256, 3)):
        layers += [InvertedResidual(cin, cout, 2, 2, act=nn.SiLU), MobileViTv2Block(cout, width, blocks)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


ARCHITECTURES = {"resnet50": resnet50, "mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small,
                 "mobilevit_v2": mobilevit_v2}
