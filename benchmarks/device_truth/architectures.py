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
- MobileOne S0-S4: Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone" (arXiv 2206.04040), as
  apple/ml-mobileone (commit b7f4e6d4) runs it re-parameterized (`inference_mode`): every block one depthwise 3x3 and
  one pointwise conv, each with ReLU; 224x224 input.
- FastViT T8 to MA36: Vasu et al., "FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization"
  (arXiv 2303.14189), as apple/ml-fastvit (commit 8af59282) runs it re-parameterized: RepMixer blocks (one depthwise
  3x3 conv) with ConvFFNs, attention in the last stage of the SA and MA variants; 256x256 input. Its patch embedding's
  large-kernel conv applies no activation (the reference computes one and discards it), and neither does this.

The Qualcomm AI Hub networks (qualcomm_ai_hub.csv) follow what qai_hub_models v0.37.0 (commit 660512ac) profiles:
its wrapper around the public model, read from that commit. The per-channel input normalization of its classification,
video and segmentation wrappers (a 1x1 affine) is left out, as for the networks above. Parameter counts equal the
reference's less one per batch-norm channel (weight and bias go, a conv bias comes back).

- Super-resolution, 4x, 1x3x128x128 in, 1x3x512x512 out:
  - QuickSRNet Small / Medium / Large: Berger et al., "QuickSRNet" (arXiv 2303.04336), as aimet-model-zoo
    (commit d09d2b04) quicksrnet/model/models.py QuickSRNetBase: 3x3 convs of 32 / 32 / 64 channels with clipped
    ReLU (Hardtanh 0..1), 2 / 5 / 11 intermediate layers, a 3x3 conv to 48 channels; the large one adds its learned
    1x1 input-to-output anchor conv before the clip; clip, then depth-to-space as the last op.
  - XLSR: Ayazoglu, "Extremely Lightweight Quantization Robust Real-Time Single-Image Super Resolution" (arXiv
    2105.10288), as aimet-model-zoo XLSRRelease: depth-to-space, then the clipped ReLU as the last op.
  - SESR-M5: Bhardwaj et al., "Collapsible Linear Blocks for Super-Efficient Super Resolution" (arXiv 2103.09404),
    as aimet-model-zoo SESRRelease (16 channels, 5 residual blocks, 1x1 anchor conv of the input added before
    depth-to-space). qai_hub_models loads the trained checkpoint without calling collapse(), so what it profiles is
    the expanded form (each block a kxk conv to 256 channels and a 1x1 conv back: its 343K parameters and 1.32 MB
    float model), not the collapsed inference form the paper describes, and that is what is built here.
  - Real-ESRGAN general x4v3: Wang et al., "Real-ESRGAN" (arXiv 2107.10833), BasicSR srvgg_arch SRVGGNetCompact
    (64 channels, 32 3x3 convs, per-channel PReLU), depth-to-space, plus the nearest-upsampled input.
  - ESRGAN and Real-ESRGAN x4plus: Wang et al., "ESRGAN" (arXiv 1809.00219), RRDBNet of xinntao/ESRGAN
    RRDBNet_arch.py and BasicSR rrdbnet_arch.py (identical for 4x): 23 RRDB blocks of 64 channels, growth 32,
    two nearest 2x upsamplings each followed by a 3x3 conv (no depth-to-space); x4plus ends in qai_hub_models'
    clamp to [0, 1], ESRGAN does not.
- Video ResNet-18s (400 Kinetics classes, 1x3x16x112x112): Tran et al., "A Closer Look at Spatiotemporal
  Convolutions for Action Recognition" (arXiv 1711.11248) as torchvision.models.video: R3D (3x3x3 convs), MC3
  (3x3x3 in the first stage, 1x3x3 after), R(2+1)D (1x3x3 then 3x1x1 with the paper's parameter-matching middle
  width, also in the stem). Global average pooling is a mean over the flattened positions (qai_hub_models'
  SimpleAvgPool).
- UNet: Ronneberger et al. (arXiv 1505.04597) as milesial/Pytorch-UNet unet_carvana (n_classes=2, bilinear=False:
  2x2 transposed convs), 1x3x640x1280 in, 2-class logits out; its pad of the upsampled map is left out (zero for
  sizes divisible by 16).
- ResNet-18/50/101, Wide ResNet-50-2, ResNeXt-50 32x4d, ResNeXt-101 32x8d (qai_hub_models' resnext101 is
  torchvision resnext101_32x8d): He et al. (arXiv 1512.03385), Zagoruyko and Komodakis (arXiv 1605.07146), Xie et
  al. (arXiv 1611.05431), torchvision layout (inner width planes * base_width / 64 * groups).
- MobileNetV3-Large: Howard et al. (arXiv 1905.02244), Table 1, as MobileNetV3-Small above.
- SqueezeNet 1.1: Iandola et al. (arXiv 1602.07360) with the v1.1 changes of the reference repository
  (forresti/SqueezeNet), as torchvision squeezenet1_1.
- ShuffleNetV2 x0.5: Ma et al. (arXiv 1807.11164), Table 5 widths 24, 48, 96, 192, 1024.
- MNASNet-B1 depth 0.5: Tan et al. (arXiv 1807.11626), torchvision mnasnet0_5 (its version 2: the stem scaled too).
- FCN and DeepLabV3 with ResNet-50 (21 classes, 1x3x520x520): Long et al. (arXiv 1411.4038), Chen et al. (arXiv
  1706.05587), torchvision.models.segmentation: the backbone's last two stages dilated (output stride 8), FCN head
  (3x3 conv to 512, 1x1 conv) or ASPP (rates 12, 24, 36, image pooling) with a 3x3 conv, bilinear upsampling to
  the input; no aux head; the qai_hub_models wrapper's per-pixel argmax cast to uint8 is the output.
- DenseNet-121: Huang et al. (arXiv 1608.06993), torchvision layout; the batch norms that precede a ReLU and a conv
  (on each concatenation, in the transitions and at the end) cannot fold and stay BatchNorm2d.
- GoogLeNet: Szegedy et al. (arXiv 1409.4842) as torchvision googlenet, without its aux heads and with its 3x3
  convs in the "5x5" branch.
- ViT-B/16: Dosovitskiy et al. (arXiv 2010.11929), torchvision vit_b_16 (224 input, 12 blocks of width 768).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F

Activation = Callable[[], nn.Module] | None


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: Activation = nn.ReLU,
         dilation: int = 1) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel // 2), dilation, groups, bias=True)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


def classifier(layers: list[nn.Module], width: int, classes: int) -> nn.Sequential:
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


class Residual(nn.Module):
    """act(body(x) + shortcut(x)), the shortcut the identity unless given."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None, act: Activation = nn.ReLU):
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act = act() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


def basic_block(cin: int, planes: int, stride: int, dilation: int = 1) -> Residual:
    body = nn.Sequential(conv(cin, planes, 3, stride, dilation=dilation), conv(planes, planes, 3, act=None, dilation=dilation))
    return Residual(body, conv(cin, planes, 1, stride, act=None) if stride != 1 or cin != planes else None)


def bottleneck(cin: int, planes: int, stride: int, dilation: int = 1, widen: int = 1, groups: int = 1) -> Residual:
    """1x1, 3x3 (stride, groups, dilation), 1x1 to 4 * planes; the inner width is planes * widen."""
    width, cout = planes * widen, planes * 4
    body = nn.Sequential(conv(cin, width, 1), conv(width, width, 3, stride, groups, dilation=dilation),
                         conv(width, cout, 1, act=None))
    return Residual(body, conv(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None)


def resnet_trunk(blocks: Sequence[int], block: Callable[..., nn.Module] = bottleneck, expansion: int = 4,
                 dilated: bool = False) -> list[nn.Module]:
    """Stem and four stages; `dilated` trades the last two stages' strides for dilation (output stride 8)."""
    layers, cin, dilation = [conv(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64, 1
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
        stride, previous = (1 if stage == 0 else 2), dilation
        if dilated and stage >= 2:
            stride, dilation = 1, dilation * 2
        for index in range(count):
            layers.append(block(cin, planes, stride if index == 0 else 1, previous if index == 0 else dilation))
            cin = planes * expansion
    return layers


def resnet18(classes: int = 1000) -> nn.Module:
    return classifier(resnet_trunk((2, 2, 2, 2), basic_block, 1), 512, classes)


def resnet50(classes: int = 1000) -> nn.Module:
    return classifier(resnet_trunk((3, 4, 6, 3)), 2048, classes)


def resnet101(classes: int = 1000) -> nn.Module:
    return classifier(resnet_trunk((3, 4, 23, 3)), 2048, classes)


def wideresnet50(classes: int = 1000) -> nn.Module:
    return classifier(resnet_trunk((3, 4, 6, 3), partial(bottleneck, widen=2)), 2048, classes)


def resnext50(classes: int = 1000) -> nn.Module:
    return classifier(resnet_trunk((3, 4, 6, 3), partial(bottleneck, widen=2, groups=32)), 2048, classes)


def resnext101(classes: int = 1000) -> nn.Module:
    return classifier(resnet_trunk((3, 4, 23, 3), partial(bottleneck, widen=4, groups=32)), 2048, classes)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: float, kernel: int = 3,
                 act: Activation = nn.ReLU6, squeeze: bool = False, expanded: int | None = None):
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
    """Global average, a 1x1 conv down to `squeezed` channels (MobileNetV3's: a quarter, rounded to 8), ReLU, a 1x1
    conv back, the gate, and the input scaled by it."""

    def __init__(self, channels: int, squeezed: int | None = None, gate: Callable[[], nn.Module] = nn.Hardsigmoid):
        super().__init__()
        squeezed = squeezed or _divisible(channels / 4)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.ReLU(),
                                   nn.Conv2d(squeezed, channels, 1), gate())

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


# MobileNetV3-Large, Table 1, in the same columns
V3_LARGE = ((3, 16, 16, False, nn.ReLU, 1), (3, 64, 24, False, nn.ReLU, 2), (3, 72, 24, False, nn.ReLU, 1),
            (5, 72, 40, True, nn.ReLU, 2), (5, 120, 40, True, nn.ReLU, 1), (5, 120, 40, True, nn.ReLU, 1),
            (3, 240, 80, False, nn.Hardswish, 2), (3, 200, 80, False, nn.Hardswish, 1),
            (3, 184, 80, False, nn.Hardswish, 1), (3, 184, 80, False, nn.Hardswish, 1),
            (3, 480, 112, True, nn.Hardswish, 1), (3, 672, 112, True, nn.Hardswish, 1),
            (5, 672, 160, True, nn.Hardswish, 2), (5, 960, 160, True, nn.Hardswish, 1),
            (5, 960, 160, True, nn.Hardswish, 1))


def _mobilenet_v3(table: tuple, last: int, hidden: int, classes: int) -> nn.Module:
    layers, cin = [conv(3, 16, 3, 2, act=nn.Hardswish)], 16
    for kernel, expanded, cout, squeeze, act, stride in table:
        layers.append(InvertedResidual(cin, cout, stride, 0, kernel, act, squeeze, expanded))
        cin = cout
    layers += [conv(cin, last, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, hidden),
               nn.Hardswish(), nn.Linear(hidden, classes)]
    return nn.Sequential(*layers)


def mobilenet_v3_small(classes: int = 1000) -> nn.Module:
    return _mobilenet_v3(V3_SMALL, 576, 1024, classes)


def mobilenet_v3_large(classes: int = 1000) -> nn.Module:
    return _mobilenet_v3(V3_LARGE, 960, 1280, classes)


# MobileOne's width multipliers of its four stages (64, 128, 256, 512 channels), per variant
MOBILEONE_WIDTHS = {"s0": (0.75, 1.0, 1.0, 2.0), "s1": (1.5, 1.5, 2.0, 2.5), "s2": (1.5, 2.0, 2.5, 4.0),
                    "s3": (2.0, 2.5, 3.0, 4.0), "s4": (3.0, 3.5, 3.5, 4.0)}


def mobileone_conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, squeeze: bool = False) -> nn.Sequential:
    """A MobileOne branch as it runs after re-parameterization: one conv, squeeze-and-excite (S4: a sixteenth of the
    channels, sigmoid gate) before the ReLU."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups)]
    if squeeze:
        layers.append(SqueezeExcite(cout, int(cout * 0.0625), nn.Sigmoid))
    return nn.Sequential(*layers, nn.ReLU())


def mobileone(variant: str, classes: int = 1000) -> nn.Module:
    """Depthwise 3x3 then pointwise blocks, 2 / 8 / 10 / 1 per stage, the first of each with stride 2; S4 puts
    squeeze-and-excite in the last 5 blocks of the third stage and in the fourth."""
    multipliers = MOBILEONE_WIDTHS[variant]
    cin = min(64, int(64 * multipliers[0]))
    layers = [mobileone_conv(3, cin, 3, 2)]
    for base, blocks, multiplier, excited in zip((64, 128, 256, 512), (2, 8, 10, 1), multipliers, (0, 0, 5, 1)):
        cout = int(base * multiplier)
        for index in range(blocks):
            squeeze = variant == "s4" and index >= blocks - excited
            layers += [mobileone_conv(cin, cin, 3, 2 if index == 0 else 1, cin, squeeze), mobileone_conv(cin, cout, 1, squeeze=squeeze)]
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


class LayerScale(nn.Module):
    """A learned per-channel scale (what stays of FastViT's layer scale after re-parameterization)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x):
        return self.scale * x


def conv_ffn(width: int, ratio: int) -> nn.Sequential:
    """FastViT's ConvFFN: a depthwise 7x7 conv, then a 1x1 expansion, GELU and a 1x1 projection."""
    return nn.Sequential(conv(width, width, 7, groups=width, act=None), conv(width, ratio * width, 1, act=nn.GELU),
                         nn.Conv2d(ratio * width, width, 1), LayerScale(width))


class RepMixerBlock(nn.Module):
    """The re-parameterized RepMixer (one depthwise 3x3 conv, no skip left) and a residual ConvFFN."""

    def __init__(self, width: int, ratio: int):
        super().__init__()
        self.mixer, self.ffn = nn.Conv2d(width, width, 3, padding=1, groups=width), conv_ffn(width, ratio)

    def forward(self, x):
        x = self.mixer(x)
        return x + self.ffn(x)


class MultiHeadAttention(nn.Module):
    """Self-attention over the positions of a feature map, heads of 32 channels, no bias on q, k, v."""

    HEAD = 32

    def __init__(self, width: int):
        super().__init__()
        self.qkv, self.out = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width)

    def forward(self, x):
        batch, width, height, breadth = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).reshape(batch, -1, 3, width // self.HEAD, self.HEAD).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, width)
        return self.out(mixed).transpose(1, 2).reshape(batch, width, height, breadth)


class FastViTAttentionBlock(nn.Module):
    """Batch norm, attention and a layer scale on one residual branch; a ConvFFN on the next."""

    def __init__(self, width: int, ratio: int):
        super().__init__()
        self.attention = nn.Sequential(nn.BatchNorm2d(width), MultiHeadAttention(width), LayerScale(width))
        self.ffn = conv_ffn(width, ratio)

    def forward(self, x):
        x = x + self.attention(x)
        return x + self.ffn(x)


# FastViT variants: blocks per stage, widths, FFN ratio, whether the last stage attends (after a 7x7 positional conv)
FASTVIT = {"t8": ((2, 2, 4, 2), (48, 96, 192, 384), 3, False), "t12": ((2, 2, 6, 2), (64, 128, 256, 512), 3, False),
           "s12": ((2, 2, 6, 2), (64, 128, 256, 512), 4, False), "sa12": ((2, 2, 6, 2), (64, 128, 256, 512), 4, True),
           "sa24": ((4, 4, 12, 4), (64, 128, 256, 512), 4, True), "sa36": ((6, 6, 18, 6), (64, 128, 256, 512), 4, True),
           "ma36": ((6, 6, 18, 6), (76, 152, 304, 608), 4, True)}


def fastvit(variant: str, classes: int = 1000) -> nn.Module:
    """FastViT as it runs re-parameterized: a stem of 3x3 stride-2, depthwise 3x3 stride-2 and 1x1 convs (GELU), four
    stages of RepMixer blocks (the last of attention blocks in the SA and MA variants) joined by patch embeddings (a
    7x7 stride-2 conv grouped per input channel, then a 1x1 conv and GELU), and a head of a grouped 3x3 conv to twice
    the width with squeeze-and-excite and GELU, global average and a linear layer."""
    blocks, widths, ratio, attends = FASTVIT[variant]
    width = widths[0]
    layers = [conv(3, width, 3, 2, act=nn.GELU), conv(width, width, 3, 2, groups=width, act=nn.GELU), conv(width, width, 1, act=nn.GELU)]
    for stage, (count, width) in enumerate(zip(blocks, widths)):
        if stage:
            layers += [nn.Conv2d(widths[stage - 1], width, 7, 2, 3, groups=widths[stage - 1]), conv(width, width, 1, act=nn.GELU)]
        last = attends and stage == len(blocks) - 1
        if last:
            layers.append(nn.Conv2d(width, width, 7, padding=3, groups=width))
        layers += [(FastViTAttentionBlock if last else RepMixerBlock)(width, ratio) for _ in range(count)]
    head = 2 * width
    layers += [nn.Conv2d(width, head, 3, padding=1, groups=width), SqueezeExcite(head, int(head * 0.0625), nn.Sigmoid), nn.GELU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, classes))


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


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = conv(cin, squeeze, 1)
        self.expand1, self.expand3 = conv(squeeze, expand, 1), conv(squeeze, expand, 3)

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1(x), self.expand3(x)], dim=1)


def squeezenet1_1(classes: int = 1000) -> nn.Module:
    pool = partial(nn.MaxPool2d, 3, 2, ceil_mode=True)
    layers = [nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), Fire(64, 16, 64), Fire(128, 16, 64), pool(), Fire(128, 32, 128),
              Fire(256, 32, 128), pool(), Fire(256, 48, 192), Fire(384, 48, 192), Fire(384, 64, 256), Fire(512, 64, 256)]
    return nn.Sequential(*layers, conv(512, classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class ShuffleBlock(nn.Module):
    """Stride 1: half the channels pass, half go through the branch; stride 2: two branches; then a shuffle of 2 groups."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        half = cout // 2
        self.skip = (nn.Sequential(conv(cin, cin, 3, stride, cin, act=None), conv(cin, half, 1)) if stride > 1
                     else None)
        self.branch = nn.Sequential(conv(cin if stride > 1 else half, half, 1),
                                    conv(half, half, 3, stride, half, act=None), conv(half, half, 1))

    def forward(self, x):
        if self.skip is None:
            kept, x = x.chunk(2, dim=1)
        else:
            kept = self.skip(x)
        y = torch.cat([kept, self.branch(x)], dim=1)
        batch, channels, height, width = y.shape
        return y.reshape(batch, 2, channels // 2, height, width).transpose(1, 2).reshape(batch, channels, height, width)


def shufflenet_v2(classes: int = 1000) -> nn.Module:
    layers, cin = [conv(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)], 24
    for cout, repeats in ((48, 4), (96, 8), (192, 4)):
        for index in range(repeats):
            layers.append(ShuffleBlock(cin, cout, 2 if index == 0 else 1))
            cin = cout
    return classifier([*layers, conv(cin, 1024, 1)], 1024, classes)


def mnasnet05(classes: int = 1000) -> nn.Module:
    depths = [_divisible(depth * 0.5) for depth in (32, 16, 24, 40, 80, 96, 192, 320)]
    layers = [conv(3, depths[0], 3, 2), conv(depths[0], depths[0], 3, groups=depths[0]), conv(depths[0], depths[1], 1, act=None)]
    cin = depths[1]
    for cout, kernel, stride, expand, repeats in zip(depths[2:], (3, 5, 5, 3, 5, 3), (2, 2, 2, 1, 2, 1), (3, 3, 6, 6, 6, 6),
                                                     (3, 3, 3, 2, 4, 1)):
        for index in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expand, kernel, nn.ReLU))
            cin = cout
    return classifier([*layers, conv(cin, 1280, 1)], 1280, classes)


# Super-resolution, 4x: each maps a 1x3xHxW image to 1x3x4Hx4W.
def clip() -> nn.Module:
    return nn.Hardtanh(0.0, 1.0)


class QuickSRNet(nn.Module):
    """3x3 convs with clipped-ReLU, a 3x3 conv to 3 * scale^2 channels (plus a learned 1x1 anchor of the input for
    the large model), a clip, then depth-to-space."""

    def __init__(self, width: int, layers: int, anchor: bool, scale: int = 4):
        super().__init__()
        self.body = nn.Sequential(conv(3, width, 3, act=clip), *(conv(width, width, 3, act=clip) for _ in range(layers)),
                                  conv(width, 3 * scale ** 2, 3, act=None))
        self.anchor = nn.Conv2d(3, 3 * scale ** 2, 1) if anchor else None
        self.tail = nn.Sequential(clip(), nn.PixelShuffle(scale))

    def forward(self, x):
        y = self.body(x)
        return self.tail(y if self.anchor is None else y + self.anchor(x))


class XLSR(nn.Module):
    """A 3x3 conv to 16 channels beside a 32-channel trunk of three grouped-conv blocks, concatenated, a 1x1 and a
    3x3 conv, depth-to-space, then a clip."""

    def __init__(self, scale: int = 4):
        super().__init__()
        self.residual = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(conv(3, 32, 3), nn.Conv2d(32, 32, 1),
                                  *(nn.Sequential(conv(32, 32, 3, groups=4), nn.Conv2d(32, 32, 1)) for _ in range(3)))
        self.tail = nn.Sequential(conv(48, 32, 1), conv(32, 3 * scale ** 2, 3, act=None), nn.PixelShuffle(scale), clip())

    def forward(self, x):
        return self.tail(torch.cat([self.body(x), self.residual(x)], dim=1))


def linear_block(cin: int, cout: int, kernel: int, act: Activation = nn.ReLU, expanded: int = 256) -> nn.Sequential:
    """SESR's collapsible linear block as trained (not collapsed): a kxk conv to 256 channels, a 1x1 conv back."""
    layers = [nn.Conv2d(cin, expanded, kernel, padding=kernel // 2, bias=False), nn.Conv2d(expanded, cout, 1)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class SESR(nn.Module):
    def __init__(self, width: int = 16, blocks: int = 5, scale: int = 4):
        super().__init__()
        self.anchor = nn.Conv2d(3, 3 * scale ** 2, 1)
        self.first = linear_block(3, width, 5)
        self.blocks = nn.Sequential(*(Residual(linear_block(width, width, 3, None)) for _ in range(blocks)))
        self.last = linear_block(width, 3 * scale ** 2, 5, None)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        features = self.first(x)
        return self.shuffle(self.last(self.blocks(features) + features) + self.anchor(x))


class SRVGGNetCompact(nn.Module):
    """3x3 convs with per-channel PReLU at low resolution, depth-to-space, plus the nearest-upsampled input."""

    def __init__(self, width: int = 64, convs: int = 32, scale: int = 4):
        super().__init__()
        prelu = partial(nn.PReLU, width)
        self.body = nn.Sequential(conv(3, width, 3, act=prelu), *(conv(width, width, 3, act=prelu) for _ in range(convs)),
                                  conv(width, 3 * scale ** 2, 3, act=None), nn.PixelShuffle(scale))
        self.scale = scale

    def forward(self, x):
        return self.body(x) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def leaky() -> nn.Module:
    return nn.LeakyReLU(0.2)


class DenseBlock(nn.Module):
    """Five 3x3 convs, each fed the concatenation of the input and every earlier output; 0.2 x the last, plus x."""

    def __init__(self, width: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(conv(width + index * growth, growth, 3, act=leaky) for index in range(4))
        self.last = nn.Conv2d(width + 4 * growth, width, 3, padding=1)

    def forward(self, x):
        features, y = [x], x
        for layer in self.layers:
            features.append(layer(y))
            y = torch.cat(features, dim=1)
        return self.last(y) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, width: int, growth: int):
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(width, growth) for _ in range(3)))

    def forward(self, x):
        return self.blocks(x) * 0.2 + x


class RRDBNet(nn.Module):
    """A 3x3 conv, RRDB blocks and a 3x3 conv with a long skip, two (nearest 2x upsample, 3x3 conv, leaky ReLU),
    a 3x3 conv with leaky ReLU and a 3x3 conv to RGB; `clamp` adds Real-ESRGAN's clamp to [0, 1]."""

    def __init__(self, width: int = 64, blocks: int = 23, growth: int = 32, clamp: bool = False):
        super().__init__()
        self.first = nn.Conv2d(3, width, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(width, growth) for _ in range(blocks)), nn.Conv2d(width, width, 3, padding=1))
        self.up = nn.ModuleList(conv(width, width, 3, act=leaky) for _ in range(2))
        self.last = nn.Sequential(conv(width, width, 3, act=leaky), nn.Conv2d(width, 3, 3, padding=1))
        self.clamp = clamp

    def forward(self, x):
        y = self.first(x)
        y = y + self.trunk(y)
        for layer in self.up:
            y = layer(F.interpolate(y, scale_factor=2, mode="nearest"))
        y = self.last(y)
        return y.clamp(0, 1) if self.clamp else y


# Video ResNet-18s (Tran et al.), 1x3x16x112x112 clips, 400 Kinetics classes. Each conv is "3d" (3x3x3), "2d"
# (1x3x3, no temporal stride) or "2+1d" (1x3x3 to `mid` channels, ReLU, 3x1x1).
def conv3d(cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1),
           act: Activation = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv3d(cin, cout, kernel, stride, tuple(k // 2 for k in kernel), bias=True)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


def video_conv(kind: str, cin: int, cout: int, mid: int, stride: int, act: Activation = nn.ReLU) -> nn.Sequential:
    if kind == "2+1d":
        return nn.Sequential(conv3d(cin, mid, (1, 3, 3), (1, stride, stride)), conv3d(mid, cout, (3, 1, 1), (stride, 1, 1), act))
    return conv3d(cin, cout, (3 if kind == "3d" else 1, 3, 3), (1 if kind == "2d" else stride, stride, stride), act)


def video_block(kind: str, cin: int, planes: int, stride: int) -> Residual:
    mid = cin * planes * 27 // (cin * 9 + 3 * planes)  # (2+1)D: as many parameters as the 3x3x3 conv it replaces
    body = nn.Sequential(video_conv(kind, cin, planes, mid, stride), video_conv(kind, planes, planes, mid, 1, act=None))
    temporal = 1 if kind == "2d" else stride
    shortcut = conv3d(cin, planes, (1, 1, 1), (temporal, stride, stride), act=None) if stride != 1 or cin != planes else None
    return Residual(body, shortcut)


class GlobalMean(nn.Module):
    """Mean over every position of a (batch, channels, ...) tensor, as rank 3 (qai_hub_models' SimpleAvgPool)."""

    def forward(self, x):
        return x.flatten(2).mean(dim=2)


def video_resnet(kinds: Sequence[str], stem: list[nn.Module], classes: int = 400) -> nn.Module:
    layers, cin = list(stem), 64
    for stage, (kind, planes) in enumerate(zip(kinds, (64, 128, 256, 512))):
        for index in range(2):
            layers.append(video_block(kind, cin, planes, 2 if stage > 0 and index == 0 else 1))
            cin = planes
    return nn.Sequential(*layers, GlobalMean(), nn.Linear(cin, classes))


def resnet_3d() -> nn.Module:
    return video_resnet(["3d"] * 4, [conv3d(3, 64, (3, 7, 7), (1, 2, 2))])


def resnet_mixed() -> nn.Module:
    return video_resnet(["3d"] + ["2d"] * 3, [conv3d(3, 64, (3, 7, 7), (1, 2, 2))])


def resnet_2plus1d() -> nn.Module:
    return video_resnet(["2+1d"] * 4, [conv3d(3, 45, (1, 7, 7), (1, 2, 2)), conv3d(45, 64, (3, 1, 1))])


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv(cin, cout, 3), conv(cout, cout, 3))


class UNet(nn.Module):
    """Four (max-pool, two 3x3 convs) down, four (2x2 transposed conv, concatenation with the skip, two 3x3 convs) up."""

    def __init__(self, classes: int = 2, widths: Sequence[int] = (64, 128, 256, 512, 1024)):
        super().__init__()
        self.down = nn.ModuleList([double_conv(3, widths[0])] + [nn.Sequential(nn.MaxPool2d(2), double_conv(cin, cout))
                                                           for cin, cout in pairwise(widths)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(width, width // 2, 2, 2) for width in reversed(widths[1:]))
        self.fuse = nn.ModuleList(double_conv(width, width // 2) for width in reversed(widths[1:]))
        self.out = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x):
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            x = fuse(torch.cat([skips.pop(), up(x)], dim=1))
        return self.out(x)


def unet_segmentation() -> nn.Module:
    return UNet()


class ASPP(nn.Module):
    """A 1x1 conv, three dilated 3x3 convs and image pooling (1x1 conv, upsampled), concatenated, a 1x1 projection."""

    def __init__(self, cin: int, rates: Sequence[int] = (12, 24, 36), width: int = 256):
        super().__init__()
        self.branches = nn.ModuleList([conv(cin, width, 1)] + [conv(cin, width, 3, dilation=rate) for rate in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv(cin, width, 1))
        self.project = conv(width * (len(rates) + 2), width, 1)

    def forward(self, x):
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class Segmenter(nn.Module):
    """Dilated ResNet-50 (output stride 8), a head, bilinear upsampling to the input's size and the per-pixel argmax
    as uint8 (qai_hub_models' wrapper output)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.backbone = nn.Sequential(*resnet_trunk((3, 4, 6, 3), dilated=True))
        self.head = head

    def forward(self, x):
        logits = F.interpolate(self.head(self.backbone(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(dim=1).to(torch.uint8)


def fcn_resnet50(classes: int = 21) -> nn.Module:
    return Segmenter(nn.Sequential(conv(2048, 512, 3), nn.Conv2d(512, classes, 1)))


def deeplabv3_resnet50(classes: int = 21) -> nn.Module:
    return Segmenter(nn.Sequential(ASPP(2048), conv(256, 256, 3), nn.Conv2d(256, classes, 1)))


class DenseStage(nn.Module):
    """Each layer (BN, ReLU, 1x1 conv to 128, ReLU, 3x3 conv to `growth`) reads the concatenation of all before it.
    The pre-activation BN over the concatenation cannot fold into a conv and stays an affine (BatchNorm2d)."""

    def __init__(self, cin: int, layers: int, growth: int = 32, inner: int = 128):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), conv(width, inner, 1),
                                                  nn.Conv2d(inner, growth, 3, padding=1, bias=False))
                                    for width in range(cin, cin + layers * growth, growth))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(x))
            x = torch.cat(features, dim=1)
        return x


def densenet121(classes: int = 1000) -> nn.Module:
    layers, width = [conv(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for index, count in enumerate((6, 12, 24, 16)):
        layers.append(DenseStage(width, count))
        width += 32 * count
        if index < 3:
            layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
            width //= 2
    return classifier([*layers, nn.BatchNorm2d(width), nn.ReLU()], width, classes)


class Inception(nn.Module):
    """1x1; 1x1 then 3x3; 1x1 then 3x3 (torchvision's 3x3 where the paper has 5x5); 3x3 max-pool then 1x1."""

    def __init__(self, cin: int, c1: int, c3in: int, c3: int, c5in: int, c5: int, pooled: int):
        super().__init__()
        self.branches = nn.ModuleList([conv(cin, c1, 1), nn.Sequential(conv(cin, c3in, 1), conv(c3in, c3, 3)),
                                       nn.Sequential(conv(cin, c5in, 1), conv(c5in, c5, 3)),
                                       nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv(cin, pooled, 1))])

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def googlenet(classes: int = 1000) -> nn.Module:
    pool = partial(nn.MaxPool2d, 3, 2, ceil_mode=True)
    layers = [conv(3, 64, 7, 2), pool(), conv(64, 64, 1), conv(64, 192, 3), pool(),
              Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64), pool(),
              Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
              Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
              Inception(528, 256, 160, 320, 32, 128, 128), nn.MaxPool2d(2, 2, ceil_mode=True),
              Inception(832, 256, 160, 320, 32, 128, 128), Inception(832, 384, 192, 384, 48, 128, 128)]
    return classifier(layers, 1024, classes)


class EncoderBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(width, eps=1e-6), nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """16x16 patches, a class token and learned positions, pre-norm encoder blocks, the class token classified."""

    def __init__(self, size: int = 224, patch: int = 16, width: int = 768, depth: int = 12, heads: int = 12,
                 hidden: int = 3072, classes: int = 1000):
        super().__init__()
        self.patchify = nn.Conv2d(3, width, patch, patch)
        self.token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(torch.zeros(1, (size // patch) ** 2 + 1, width))
        self.encoder = nn.Sequential(*(EncoderBlock(width, heads, hidden) for _ in range(depth)), nn.LayerNorm(width, eps=1e-6))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.patchify(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        return self.head(self.encoder(x)[:, 0])


ARCHITECTURES = {"resnet50": resnet50, "mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small,
                 "mobilevit_v2": mobilevit_v2, **{f"mobileone_{variant}": partial(mobileone, variant) for variant in MOBILEONE_WIDTHS},
                 **{f"fastvit_{variant}": partial(fastvit, variant) for variant in FASTVIT},
                 "quicksrnetsmall": partial(QuickSRNet, 32, 2, False), "quicksrnetmedium": partial(QuickSRNet, 32, 5, False),
                 "quicksrnetlarge": partial(QuickSRNet, 64, 11, True), "xlsr": XLSR, "sesr_m5": SESR,
                 "real_esrgan_general_x4v3": SRVGGNetCompact, "esrgan": RRDBNet,
                 "real_esrgan_x4plus": partial(RRDBNet, clamp=True),
                 "resnet_3d": resnet_3d, "resnet_mixed": resnet_mixed, "resnet_2plus1d": resnet_2plus1d,
                 "unet_segmentation": unet_segmentation,
                 "resnet18": resnet18, "resnet101": resnet101, "wideresnet50": wideresnet50, "resnext50": resnext50,
                 "resnext101": resnext101,
                 "mobilenet_v3_large": mobilenet_v3_large, "squeezenet1_1": squeezenet1_1, "shufflenet_v2": shufflenet_v2,
                 "mnasnet05": mnasnet05,
                 "fcn_resnet50": fcn_resnet50, "deeplabv3_resnet50": deeplabv3_resnet50, "densenet121": densenet121,
                 "googlenet": googlenet, "vit": ViT}
