"""z-hXu/ReCU, ``cifar/modules/binarized_modules.py`` + ``cifar/models_cifar/resnet.py`` +
``cifar/main.py``.

``BinarizeConv2d`` standardises the weight per output channel and scales it by ``2*sqrt(2)/std``
-- written ``w0 / (sqrt(var + 1e-5) / 2 / np.sqrt(2))``, a numpy scalar in forward -- then clamps
it to ``+-Q_tau`` where ``Q_tau = -E|w1| * log(2 - 2*tau)`` is pulled out to a Python float with
``.detach().cpu().item()``. ``tau`` is a registered *buffer* (``torch.tensor(1.)``, so
``log(0) = -inf`` and the clamp is a no-op until the trainer sets it), replaced every epoch by
``module.tau = tau`` with a tensor of shape ``[1]`` (the state-dict shape changes from ``[]``).
The sign is ``BinaryQuantize().apply(w2)`` (identity STE, no clip); the scale is a learned
``alpha`` of shape ``(out, 1, 1)`` multiplied onto the *output*. The input is standardised only
``if self.training`` and binarized by ``BinaryQuantize_a`` (triangle STE ``2 - |2x|``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function
from torch.nn import init

TAU_MIN, TAU_MAX = 0.85, 0.99  # utils/options.py defaults


class BinaryQuantize(Function):
    @staticmethod
    def forward(ctx, input):
        return torch.sign(input)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.clone()


class BinaryQuantize_a(Function):
    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return torch.sign(input)

    @staticmethod
    def backward(ctx, grad_output):
        input = ctx.saved_tensors[0]
        grad_input = (2 - torch.abs(2 * input)).clamp(min=0)
        return grad_input * grad_output.clone()


class BinarizeConv2d(nn.Conv2d):
    def __init__(self, *kargs, **kwargs):
        super().__init__(*kargs, **kwargs)
        self.alpha = nn.Parameter(torch.rand(self.weight.size(0), 1, 1), requires_grad=True)
        self.register_buffer("tau", torch.tensor(1.0))

    def forward(self, input):
        a = input
        w = self.weight
        w0 = w - w.mean([1, 2, 3], keepdim=True)
        w1 = w0 / (torch.sqrt(w0.var([1, 2, 3], keepdim=True) + 1e-5) / 2 / np.sqrt(2))
        EW = torch.mean(torch.abs(w1))
        Q_tau = (-EW * torch.log(2 - 2 * self.tau)).detach().cpu().item()
        w2 = torch.clamp(w1, -Q_tau, Q_tau)
        if self.training:  # noqa: SIM108 - the upstream statement form
            a0 = a / torch.sqrt(a.var([1, 2, 3], keepdim=True) + 1e-5)
        else:
            a0 = a
        bw = BinaryQuantize().apply(w2)
        ba = BinaryQuantize_a().apply(a0)
        output = F.conv2d(ba, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return output * self.alpha


class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super().__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class BasicBlock_1w1a(nn.Module):
    """Each conv has its own shortcut; the downsampling shortcut is AvgPool then zero channel
    padding of ``planes // 4`` on each side."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = BinarizeConv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = BinarizeConv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        pad = 0 if planes == self.expansion * in_planes else planes // 4
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d((2, 2)),
                LambdaLayer(lambda x: F.pad(x, (0, 0, 0, 0, pad, pad), "constant", 0)),
            )

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        out += self.shortcut(x)
        out = F.hardtanh(out, inplace=True)
        x1 = out
        out = self.bn2(self.conv2(out))
        out += x1
        return F.hardtanh(out, inplace=True)


class ResNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock_1w1a(8, 8))
        self.layer2 = nn.Sequential(BasicBlock_1w1a(8, 16, stride=2))
        self.bn2 = nn.BatchNorm1d(16)
        self.linear = nn.Linear(16, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.hardtanh(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(self.bn2(out))


def make_resnet():
    torch.manual_seed(0)
    return ResNet()


def tau_trainer_step(model, optimizer, loss_fn, epochs=10):
    """``main.py``: every epoch, ``tau`` grows exponentially from TAU_MIN to TAU_MAX and is
    assigned to each BinarizeConv2d (collected once into ``conv_modules``)."""
    conv_modules = [m for _, m in model.named_modules() if isinstance(m, BinarizeConv2d)]
    state = {"epoch": 0}

    def cpt_tau(epoch):
        a = torch.tensor(np.e)
        t_min, t_max = torch.tensor(TAU_MIN).float(), torch.tensor(TAU_MAX).float()
        scale = (t_max - t_min) / (a - 1)
        return scale * torch.tensor([torch.pow(a, epoch / epochs)]).float() + t_min - scale

    def step(inputs, target):
        tau = cpt_tau(state["epoch"])
        state["epoch"] += 1
        for module in conv_modules:
            module.tau = tau
        optimizer.zero_grad()
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
