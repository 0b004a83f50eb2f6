"""htqin/IR-Net, ``CIFAR-10/ResNet20/1w1a`` (``modules/binaryfunction.py``, ``modules/ir_1w1a.py``,
``resnet.py``, ``trainer.py``).

``IRConv2d`` (an ``nn.Conv2d`` subclass) standardises each output channel of the weight (Libra-PB:
minus the mean, divided by the std, both through ``view(w.size(0), -1)``), computes a detached
power-of-two scale ``2 ** round(log2(mean|bw|))`` with ``torch.tensor([2] * bw.size(0))``, and
binarizes weight *and* input with ``BinaryQuantize().apply(x, self.k, self.t)`` -- the Function
is instantiated before ``.apply`` (PyTorch 2.14 warns that instantiating will become an error).
``BinaryQuantize`` is ``torch.sign`` forward and the EDE surrogate ``k * t * (1 - tanh(t x)^2)``
backward. ``k``/``t`` are plain tensor attributes (``.cuda()`` upstream), not buffers, and the
trainer *reassigns* them on every epoch for each conv by explicit attribute path, one shared
tensor object for all layers (:func:`ede_trainer_step`).

So the sign is applied to a tensor derived from the latent (standardised), not to the latent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function
from torch.nn import init


class BinaryQuantize(Function):
    @staticmethod
    def forward(ctx, input, k, t):
        ctx.save_for_backward(input, k, t)
        return torch.sign(input)

    @staticmethod
    def backward(ctx, grad_output):
        input, k, t = ctx.saved_tensors
        grad_input = k * t * (1 - torch.pow(torch.tanh(input * t), 2)) * grad_output
        return grad_input, None, None


class IRConv2d(nn.Conv2d):
    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self.k = torch.tensor([10]).float()
        self.t = torch.tensor([0.1]).float()

    def forward(self, input):
        w = self.weight
        a = input
        bw = w - w.view(w.size(0), -1).mean(-1).view(w.size(0), 1, 1, 1)
        bw = bw / bw.view(bw.size(0), -1).std(-1).view(bw.size(0), 1, 1, 1)
        exponent = (torch.log(bw.abs().view(bw.size(0), -1).mean(-1)) / math.log(2)).round()
        sw = torch.pow(torch.tensor([2] * bw.size(0)).float(), exponent.float())
        sw = sw.view(bw.size(0), 1, 1, 1).detach()
        bw = BinaryQuantize().apply(bw, self.k, self.t)
        ba = BinaryQuantize().apply(a, self.k, self.t)
        bw = bw * sw
        return F.conv2d(ba, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)


class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super().__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class BasicBlock_1w1a(nn.Module):
    """Two IRConv2d, each followed by BN and its own shortcut, Hardtanh after each; option-A
    shortcut (strided slice, zero channel padding through a lambda) when the shape changes."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = IRConv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = IRConv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            pad = planes // 4
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0)
            )

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        out += self.shortcut(x)
        out = F.hardtanh(out)
        x1 = out
        out = self.bn2(self.conv2(out))
        out += x1
        return F.hardtanh(out)


def _weights_init(m):
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        init.kaiming_normal_(m.weight)


class ResNet(nn.Module):
    """ResNet-20 layout, one block per stage and two stages (8 -> 16 channels)."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock_1w1a(8, 8))
        self.layer2 = nn.Sequential(BasicBlock_1w1a(8, 16, stride=2))
        self.bn2 = nn.BatchNorm1d(16)
        self.linear = nn.Linear(16, classes)
        self.apply(_weights_init)

    def forward(self, x):
        out = F.hardtanh(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(self.bn2(out))


def make_resnet():
    torch.manual_seed(0)
    return ResNet()


def ede_trainer_step(model, optimizer, loss_fn, epochs=10):
    """``trainer.py``: before every epoch compute ``t`` on a log scale from 1e-3 to 1e1 and
    ``k = max(1/t, 1)``, then assign them to each binary conv by attribute path. One call of the
    returned step is one epoch here."""
    t_min, t_max = 1e-3, 1e1
    state = {"epoch": 0}

    def log_up(k_min, k_max, epoch):
        lo, hi = math.log(k_min) / math.log(10), math.log(k_max) / math.log(10)
        return torch.tensor([math.pow(10, lo + (hi - lo) / epochs * epoch)]).float()

    def step(inputs, target):
        t = log_up(t_min, t_max, state["epoch"])
        k = 1 / t if t < 1 else torch.tensor([1]).float()
        state["epoch"] += 1
        for layer in (model.layer1, model.layer2):
            for i in range(len(layer)):
                layer[i].conv1.k = k
                layer[i].conv2.k = k
                layer[i].conv1.t = t
                layer[i].conv2.t = t
        optimizer.zero_grad()
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
