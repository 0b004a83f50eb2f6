"""lmbxmu/RBNN, ``cifar/modules/binarized_modules.py`` + ``cifar/models_cifar/resnet.py`` +
``cifar/main.py`` (the imagenet copy of the module is identical).

``BinarizeConv2d`` standardises weight and input per sample/channel, reshapes the weight to
``(out, a, b)`` with ``a, b = get_ab(np.prod(w.shape[1:]))`` -- ``b`` is a *numpy* integer,
passed to ``view`` -- and rotates it with two orthogonal matrices ``R1``/``R2`` (buffers from
scipy's ``ortho_group``). Inside forward, on a Python condition on a plain attribute,
``if self.epoch > -1 and self.epoch % args.rotation_update == 0``, it runs three alternating
updates (``B = torch.sign(V)`` of the detached rotated weight, then ``torch.svd``) and
*reassigns the buffers* ``self.R1``/``self.R2``. The rotated weight is stored in a plain tensor
attribute ``self.Rweight``; a learned ``rotate`` angle mixes it in (``|sin(rotate)|``); the sign
is ``BinaryQuantize().apply(w3, k, t)`` with a clipped-triangle surrogate, ``alpha`` (out, 1, 1)
scales the output. ``args`` is a module-level global parsed from the command line
(``rotation_update``, ``a32`` for real activations).

The trainer assigns ``k``/``t`` to *every* ``nn.Conv2d`` (the real stem too) each epoch, sets
``module.epoch = epoch`` before the epoch and ``-1`` from the second batch on (and for
validation): so the rotation update, and its three extra weight-derived signs per conv, runs on
the first batch of each epoch only (:func:`rotation_trainer_step`).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import ortho_group
from torch import nn
from torch.autograd import Function
from torch.nn import init

# stands in for ``from utils.options import args`` (defaults of cifar/utils/options.py)
args = SimpleNamespace(rotation_update=1, a32=False, Tmin=1e-2, Tmax=1e1, epochs=10)


def get_ab(N):
    root = int(np.sqrt(N))
    for i in range(root, 0, -1):
        if N % i == 0:
            return i, N // i
    return None


class BinaryQuantize(Function):
    @staticmethod
    def forward(ctx, input, k, t):
        ctx.save_for_backward(input, k, t)
        return torch.sign(input)

    @staticmethod
    def backward(ctx, grad_output):
        input, k, t = ctx.saved_tensors
        grad_input = k * (2 * torch.sqrt(t**2 / 2) - torch.abs(t**2 * input))
        return grad_input.clamp(min=0) * grad_output.clone(), None, None


class BinaryQuantize_a(Function):
    @staticmethod
    def forward(ctx, input, k, t):
        ctx.save_for_backward(input, k, t)
        return torch.sign(input)

    @staticmethod
    def backward(ctx, grad_output):
        input, k, t = ctx.saved_tensors
        k = torch.tensor(1.0).to(input.device)
        t = max(t, torch.tensor(1.0).to(input.device))
        grad_input = k * (2 * torch.sqrt(t**2 / 2) - torch.abs(t**2 * input))
        return grad_input.clamp(min=0) * grad_output.clone(), None, None


class BinarizeConv2d(nn.Conv2d):
    _seed = 0  # upstream draws R1/R2 from numpy's global generator; seeded here

    def __init__(self, *kargs, **kwargs):
        super().__init__(*kargs, **kwargs)
        self.k = torch.tensor([10.0]).float()
        self.t = torch.tensor([0.1]).float()
        self.epoch = -1
        w = self.weight
        self.a, self.b = get_ab(np.prod(w.shape[1:]))
        BinarizeConv2d._seed += 1
        r1 = ortho_group.rvs(dim=self.a, random_state=BinarizeConv2d._seed)
        r2 = ortho_group.rvs(dim=self.b, random_state=BinarizeConv2d._seed + 1000)
        self.register_buffer("R1", torch.tensor(r1).float())
        self.register_buffer("R2", torch.tensor(r2).float())
        self.Rweight = torch.ones_like(w)
        sw = w.abs().view(w.size(0), -1).mean(-1).float().view(w.size(0), 1, 1).detach()
        self.alpha = nn.Parameter(sw, requires_grad=True)
        self.rotate = nn.Parameter(torch.ones(w.size(0), 1, 1, 1) * np.pi / 2, requires_grad=True)
        self.Rotate = torch.zeros(1)

    def forward(self, input):
        a0 = input
        w = self.weight
        w1 = w - w.mean([1, 2, 3], keepdim=True)
        w2 = w1 / w1.std([1, 2, 3], keepdim=True)
        a1 = a0 - a0.mean([1, 2, 3], keepdim=True)
        a2 = a1 / a1.std([1, 2, 3], keepdim=True)
        a, b = self.a, self.b
        X = w2.view(w.shape[0], a, b)
        if self.epoch > -1 and self.epoch % args.rotation_update == 0:
            for _ in range(3):
                # B step: binary codes of the current rotation (a weight-derived sign)
                V = self.R1.t() @ X.detach() @ self.R2
                B = torch.sign(V)
                # R1 step
                pairs = list(zip(B, X.detach(), strict=True))
                D1 = sum([Bi @ (self.R2.t()) @ (Xi.t()) for (Bi, Xi) in pairs])
                U1, _S1, V1 = torch.svd(D1)
                self.R1 = V1 @ (U1.t())
                # R2 step
                D2 = sum([(Xi.t()) @ self.R1 @ Bi for (Bi, Xi) in pairs])
                U2, _S2, V2 = torch.svd(D2)
                self.R2 = U2 @ (V2.t())
        self.Rweight = ((self.R1.t()) @ X @ (self.R2)).view_as(w)
        delta = self.Rweight.detach() - w2
        w3 = w2 + torch.abs(torch.sin(self.rotate)) * delta
        bw = BinaryQuantize().apply(w3, self.k.to(w.device), self.t.to(w.device))
        if args.a32:
            ba = a2
        else:
            ba = BinaryQuantize_a().apply(a2, self.k.to(w.device), self.t.to(w.device))
        output = F.conv2d(ba, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return output * self.alpha


class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super().__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class BasicBlock_1w1a(nn.Module):
    """conv1, BN, Hardtanh, conv2, BN, + shortcut (option A), Hardtanh: one residual per block."""

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
        if stride != 1 or in_planes != planes:
            pad = planes // 4
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0)
            )

    def forward(self, x):
        out = F.hardtanh(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.hardtanh(out)


class ResNet(nn.Module):
    """As upstream, every BatchNorm2d starts with weight 1e-8 and bias 0."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock_1w1a(8, 8))
        self.layer2 = nn.Sequential(BasicBlock_1w1a(8, 16, stride=2))
        self.bn2 = nn.BatchNorm1d(16)
        self.linear = nn.Linear(16, classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1e-8)
                m.bias.data.zero_()
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.hardtanh(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(self.bn2(out))


def make_resnet():
    torch.manual_seed(0)
    BinarizeConv2d._seed = 0
    return ResNet()


def rotation_trainer_step(model, optimizer, loss_fn, batches_per_epoch=2):
    """``main.py``: per epoch set ``k``/``t`` on every ``nn.Conv2d`` and ``epoch`` on each conv;
    ``train()`` resets ``epoch`` to -1 at batch 1. Steps ``0, 2, 4, ...`` start an epoch."""
    conv_modules = [m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    state = {"batch": 0}

    def cpt_tk(epoch):
        t_min, t_max = torch.tensor(args.Tmin).float(), torch.tensor(args.Tmax).float()
        lo, hi = torch.log10(t_min), torch.log10(t_max)
        t = torch.tensor([torch.pow(torch.tensor(10.0), lo + (hi - lo) / args.epochs * epoch)])
        t = t.float()
        k = max(1 / t, torch.tensor(1.0)).float()
        return t, k

    def step(inputs, target):
        epoch, i = divmod(state["batch"], batches_per_epoch)
        state["batch"] += 1
        if i == 0:
            t, k = cpt_tk(epoch)
            for _, module in model.named_modules():
                if isinstance(module, nn.Conv2d):
                    module.k = k
                    module.t = t
            for module in conv_modules:
                module.epoch = epoch
        if i == 1:
            for module in conv_modules:
                module.epoch = -1
        optimizer.zero_grad()
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
