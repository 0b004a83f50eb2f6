"""liuzechun/Bi-Real-net, ``pytorch_implementation/``: the two official PyTorch releases.

``BiReal18_34/birealnet.py``: ``HardBinaryConv`` keeps its latent as a *flat* ``(n, 1)``
Parameter named ``weights`` and views it to the kernel shape in forward. The scale is mean |W|
per output channel written as three nested ``torch.mean`` of the *builtin* ``abs``; it is
detached, multiplied with ``torch.sign``, and the STE is detach arithmetic around
``torch.clamp(W, -1, 1)``. Init: ``torch.rand(...) * 0.001`` (every weight starts at +1).

``BiReal_50/birealnet.py``: the same arithmetic on a normally shaped ``weight`` Parameter; 1x1
and 3x3 binary convs share the class; blocks take and return *two* tensors ``(x1, x2)``; the
first block of the net uses a real 1x1 conv and a "leaky clip" instead of the sign.

Activation: ``BinaryActivation``, ``torch.sign`` with the piecewise-quadratic STE written with
float masks (``mask.type(torch.float32)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BinaryActivation(nn.Module):
    """Sign forward; backward of the quadratic approximation (2 + 2x on [-1, 0), 2 - 2x on
    [0, 1), 0 outside), assembled from float masks and detach arithmetic."""

    def forward(self, x):
        out_forward = torch.sign(x)
        below = (x < -1).type(torch.float32)
        negative = (x < 0).type(torch.float32)
        inside = (x < 1).type(torch.float32)
        approx = -1 * below + (x * x + 2 * x) * (1 - below)
        approx = approx * negative + (-x * x + 2 * x) * (1 - negative)
        approx = approx * inside + 1 * (1 - inside)
        return out_forward.detach() - approx.detach() + approx


class HardBinaryConv(nn.Module):
    """BiReal18/34: flat ``(n, 1)`` ``weights`` viewed as ``self.shape`` in forward."""

    def __init__(self, in_chn, out_chn, kernel_size=3, stride=1, padding=1):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.number_of_weights = in_chn * out_chn * kernel_size * kernel_size
        self.shape = (out_chn, in_chn, kernel_size, kernel_size)
        self.weights = nn.Parameter(
            torch.rand((self.number_of_weights, 1)) * 0.001, requires_grad=True
        )

    def forward(self, x):
        real_weights = self.weights.view(self.shape)
        per_channel = torch.mean(abs(real_weights), dim=3, keepdim=True)
        per_channel = torch.mean(per_channel, dim=2, keepdim=True)
        scaling_factor = torch.mean(per_channel, dim=1, keepdim=True).detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        return F.conv2d(x, binary_weights, stride=self.stride, padding=self.padding)


class HardBinaryConv50(nn.Module):
    """BiReal50: the same arithmetic on a kernel-shaped ``weight`` Parameter."""

    def __init__(self, in_chn, out_chn, kernel_size=3, stride=1, padding=1):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.shape = (out_chn, in_chn, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.rand(self.shape) * 0.001, requires_grad=True)

    def forward(self, x):
        real_weight = self.weight
        per_channel = torch.mean(abs(real_weight), dim=3, keepdim=True)
        per_channel = torch.mean(per_channel, dim=2, keepdim=True)
        scaling_factor = torch.mean(per_channel, dim=1, keepdim=True).detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weight)
        cliped_weights = torch.clamp(real_weight, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        return F.conv2d(x, binary_weights, stride=self.stride, padding=self.padding)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """sign -> binary 3x3 -> BN, plus the (downsampled) identity."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.binary_activation = BinaryActivation()
        self.binary_conv = HardBinaryConv(inplanes, planes, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.binary_activation(x)
        out = self.binary_conv(out)
        out = self.bn1(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return out


class BiRealNet18(nn.Module):
    """Real stem, two 8-channel blocks, one 16-channel stride-2 block (AvgPool + real 1x1
    shortcut, as upstream), real classifier."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        down = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2), conv1x1(8, 16), nn.BatchNorm2d(16)
        )
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2, downsample=down))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


class Leakyclip(nn.Module):
    """BiReal50's first-block activation: identity in [-1, 1], slope 0.1 outside."""

    def forward(self, x):
        low = (x < -1).type(torch.float32)
        high = (x > 1).type(torch.float32)
        out = (0.1 * x - 0.9) * low + x * (1 - low)
        return (0.1 * out + 0.9) * high + out * (1 - high)


class Bottleneck(nn.Module):
    """Two-stream bottleneck: ``forward(x1, x2) -> (out2, out3)``; three binary convs (two in the
    first block, whose 1x1 reduction is real)."""

    def __init__(self, inplanes, planes, stride=1, is_downsample=False, is_first_block=False):
        super().__init__()
        expansion = 4
        midplanes = planes // expansion
        if is_first_block:
            self.conv1 = conv1x1(inplanes, midplanes)
        else:
            self.conv1 = HardBinaryConv50(inplanes, midplanes, kernel_size=1, padding=0)
        self.bn1 = nn.BatchNorm2d(midplanes)
        self.conv2 = HardBinaryConv50(midplanes, midplanes, kernel_size=3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(midplanes)
        self.conv3 = HardBinaryConv50(midplanes, planes, kernel_size=1, padding=0)
        self.bn3 = nn.BatchNorm2d(planes)
        self.leaky_clip = Leakyclip()
        self.binary_activation = BinaryActivation()
        self.stride = stride
        self.is_first_block = is_first_block
        self.is_downsample = is_downsample
        if is_downsample:
            self.down_conv1x1 = conv1x1(inplanes // expansion, planes // expansion)
            self.pooling = nn.AvgPool2d(2, 2)
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride), conv1x1(inplanes, planes), nn.BatchNorm2d(planes)
            )

    def forward(self, x1, x2):
        identity_first = x1
        identity_original = x2
        out1 = self.leaky_clip(x2) if self.is_first_block else self.binary_activation(x2)
        out1 = self.bn1(self.conv1(out1))
        if not self.is_first_block:
            if self.is_downsample:
                identity_first = self.down_conv1x1(x1)
            out1 += identity_first
        out2 = self.bn2(self.conv2(self.binary_activation(out1)))
        identity_mid = out1
        if self.is_downsample and self.stride == 2:
            identity_mid = self.pooling(out1)
        out2 += identity_mid
        out3 = self.bn3(self.conv3(self.binary_activation(out2)))
        if self.is_downsample:
            identity_original = self.downsample(x2)
        out3 += identity_original
        return out2, out3


class BiRealNet50(nn.Module):
    """Stem feeds both streams through the same max-pool; three bottlenecks of 16 channels."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.layers = nn.ModuleList(
            [
                Bottleneck(4, 16, stride=1, is_downsample=True, is_first_block=True),
                Bottleneck(16, 16),
                Bottleneck(16, 16, stride=2, is_downsample=True),
            ]
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x1 = self.maxpool(x)
        x2 = self.maxpool(x)
        for block in self.layers:
            x1, x2 = block(x1, x2)
        x = self.avgpool(x2)
        return self.fc(x.view(x.size(0), -1))


def make_bireal18():
    torch.manual_seed(0)
    return BiRealNet18()


def make_bireal50():
    torch.manual_seed(0)
    return BiRealNet50()
