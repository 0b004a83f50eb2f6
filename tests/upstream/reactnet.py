"""liuzechun/ReActNet: the MobileNet and the ResNet variants (step 2, binary weights).

``mobilenet/2_step2/reactnet.py``: ``HardBinaryConv`` with the Bi-Real 18/34 arithmetic on a
*flat* ``(n, 1)`` ``weights`` Parameter viewed to the kernel shape (3x3 and 1x1 share the
class). Each block applies one ``BinaryActivation`` module twice, moves its thresholds with
``LearnableBias`` (``x + bias.expand_as(x)``) and reshapes with RPReLU (bias, PReLU, bias); a
channel-doubling block runs two binary 1x1 convs and concatenates them.

``resnet/2_step2/birealnet.py``: the same ``HardBinaryConv`` but on a kernel-shaped ``weight``
(the flat line is commented out upstream), inside a Bi-Real block with the ReAct moves.

Both clamp the STE surrogate to [-1, 1] (not 1.5), and neither has an eval-only path. Step 1 of
both (``1_step1``) uses real ``nn.Conv2d`` weights with binary activations.

``train.py`` puts a parameter into the weight-decay group when ``p.ndimension() == 4 or 'conv' in
pname``: the MobileNet's flat 2-D ``...binary_3x3.weights`` / ``...binary_pw.weights`` match
neither, so its binary latents get *no* weight decay (:func:`weight_decay_split`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bireal import BinaryActivation


class LearnableBias(nn.Module):
    def __init__(self, out_chn):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, out_chn, 1, 1), requires_grad=True)

    def forward(self, x):
        return x + self.bias.expand_as(x)


class HardBinaryConv(nn.Module):
    """MobileNet step 2: flat ``weights`` viewed as the kernel."""

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
        scaling_factor = torch.mean(
            torch.mean(torch.mean(abs(real_weights), dim=3, keepdim=True), dim=2, keepdim=True),
            dim=1,
            keepdim=True,
        ).detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        return F.conv2d(x, binary_weights, stride=self.stride, padding=self.padding)


class HardBinaryConvShaped(HardBinaryConv):
    """ResNet step 2: ``self.weight`` of the kernel shape, no view."""

    def __init__(self, in_chn, out_chn, kernel_size=3, stride=1, padding=1):
        nn.Module.__init__(self)
        self.stride = stride
        self.padding = padding
        self.number_of_weights = in_chn * out_chn * kernel_size * kernel_size
        self.shape = (out_chn, in_chn, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.rand(self.shape) * 0.001, requires_grad=True)

    def forward(self, x):
        real_weights = self.weight
        scaling_factor = torch.mean(
            torch.mean(torch.mean(abs(real_weights), dim=3, keepdim=True), dim=2, keepdim=True),
            dim=1,
            keepdim=True,
        ).detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        return F.conv2d(x, binary_weights, stride=self.stride, padding=self.padding)


def binaryconv3x3(in_planes, out_planes, stride=1):
    return HardBinaryConv(in_planes, out_planes, kernel_size=3, stride=stride, padding=1)


def binaryconv1x1(in_planes, out_planes, stride=1):
    return HardBinaryConv(in_planes, out_planes, kernel_size=1, stride=stride, padding=0)


class FirstConv3x3(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, oup, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(oup)

    def forward(self, x):
        return self.bn1(self.conv1(x))


class MobileBlock(nn.Module):
    """ReActNet-A block: binary 3x3 (+ pooled identity), RPReLU, binary 1x1 (or two of them
    concatenated when the width doubles), RPReLU. One BinaryActivation, used twice."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.move11 = LearnableBias(inplanes)
        self.binary_3x3 = binaryconv3x3(inplanes, inplanes, stride=stride)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.move12 = LearnableBias(inplanes)
        self.prelu1 = nn.PReLU(inplanes)
        self.move13 = LearnableBias(inplanes)
        self.move21 = LearnableBias(inplanes)
        if inplanes == planes:
            self.binary_pw = binaryconv1x1(inplanes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
        else:
            self.binary_pw_down1 = binaryconv1x1(inplanes, inplanes)
            self.binary_pw_down2 = binaryconv1x1(inplanes, inplanes)
            self.bn2_1 = nn.BatchNorm2d(inplanes)
            self.bn2_2 = nn.BatchNorm2d(inplanes)
        self.move22 = LearnableBias(planes)
        self.prelu2 = nn.PReLU(planes)
        self.move23 = LearnableBias(planes)
        self.binary_activation = BinaryActivation()
        self.stride = stride
        self.inplanes = inplanes
        self.planes = planes
        if self.inplanes != self.planes:
            self.pooling = nn.AvgPool2d(2, 2)

    def forward(self, x):
        out1 = self.binary_activation(self.move11(x))
        out1 = self.bn1(self.binary_3x3(out1))
        if self.stride == 2:
            x = self.pooling(x)
        out1 = x + out1
        out1 = self.move13(self.prelu1(self.move12(out1)))
        out2 = self.binary_activation(self.move21(out1))
        if self.inplanes == self.planes:
            out2 = self.bn2(self.binary_pw(out2))
            out2 += out1
        else:
            assert self.planes == self.inplanes * 2
            out2_1 = self.bn2_1(self.binary_pw_down1(out2))
            out2_2 = self.bn2_2(self.binary_pw_down2(out2))
            out2_1 += out1
            out2_2 += out1
            out2 = torch.cat([out2_1, out2_2], dim=1)
        return self.move23(self.prelu2(self.move22(out2)))


class ReActNetMobile(nn.Module):
    """Stage widths 8 -> 8 -> 16 (the last block halves the map and doubles the width)."""

    def __init__(self, classes=10):
        super().__init__()
        widths = [8, 8, 16]
        self.feature = nn.ModuleList()
        for i, width in enumerate(widths):
            if i == 0:
                self.feature.append(FirstConv3x3(3, width, 1))
            elif widths[i - 1] != width:
                self.feature.append(MobileBlock(widths[i - 1], width, 2))
            else:
                self.feature.append(MobileBlock(widths[i - 1], width, 1))
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        for block in self.feature:
            x = block(x)
        x = self.pool1(x)
        return self.fc(x.view(x.size(0), -1))


class ReActResBlock(nn.Module):
    """ReActNet's ResNet block: move0, sign, binary 3x3, BN, identity, move1, PReLU, move2."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.move0 = LearnableBias(inplanes)
        self.binary_activation = BinaryActivation()
        self.binary_conv = HardBinaryConvShaped(inplanes, planes, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.move1 = LearnableBias(planes)
        self.prelu = nn.PReLU(planes)
        self.move2 = LearnableBias(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.bn1(self.binary_conv(self.binary_activation(self.move0(x))))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.move2(self.prelu(self.move1(out)))


class ReActNetResNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        down = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(8, 16, kernel_size=1, bias=False),
            nn.BatchNorm2d(16),
        )
        self.layer1 = nn.Sequential(ReActResBlock(8, 8), ReActResBlock(8, 16, 2, down))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer1(self.bn1(self.conv1(x)))
        x = self.avgpool(x)
        return self.fc(x.view(x.size(0), -1))


def make_mobile():
    torch.manual_seed(0)
    return ReActNetMobile()


def make_resnet():
    torch.manual_seed(0)
    return ReActNetResNet()


def weight_decay_split(model):
    """``train.py``'s grouping: names of the decayed and of the other parameters."""
    decayed, other = [], []
    for pname, p in model.named_parameters():
        (decayed if p.ndimension() == 4 or "conv" in pname else other).append(pname)
    return decayed, other
