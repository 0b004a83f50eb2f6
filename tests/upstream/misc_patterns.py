"""Spellings met in BNN code that defeat naive tracing or pattern matching, one per layer.

Where each comes from:

* numpy scalars in the binarizer: z-hXu/ReCU ``modules/binarized_modules.py`` divides by
  ``np.sqrt(2)`` in forward (see ``recu.py``); lmbxmu/RBNN multiplies by ``np.pi / 2``. A numpy
  float on the *left* of a tensor works eagerly (``Tensor.__array_priority__``) but not on an
  fx Proxy (:class:`NumpyScalarConv`).
* a module constructed inside forward: kyegomez/BitNet ``bitnet/bitlinear.py``,
  ``SimpleRMSNorm(self.in_features)(x)`` (see ``bitnet.py``); the variant here builds a fresh
  ``nn.BatchNorm2d`` on every call, which is in training mode whatever the parent's mode
  (:class:`FreshNormConv`).
* numpy integers in ``view()``: lmbxmu/RBNN ``get_ab(np.prod(w.shape[1:]))`` returns a
  ``numpy.int64`` used in ``w2.view(w.shape[0], a, b)`` (:class:`NumpyViewConv`).
* a branch on the input shape: itayhubara/BinaryNet.pytorch ``if input.size(1) != 3`` /
  ``!= 784`` (see ``binarynet.py``); here the branch also skips the weight sign, so the first
  layer is entirely real although it has the binary layer's class (:class:`ShapeBranchConv`).
* the binary weight written by slice assignment into ``torch.zeros_like(w)``: seen in public
  quantization code rather than in the BNN repositories above -- a ``QuantizeLinear`` with a
  1-bit group-wise mode (``scaling_factor[:, i1:i2] = ...`` into
  ``torch.zeros_like(real_weights)``, then ``torch.sign(real_weights / scaling_factor)``) and a
  ternary post-training script (``w_q[mask] = torch.sign(w[mask])``); the code index did not
  name their repositories. Here: one sign per group, each on a slice of the latent
  (:class:`GroupSliceConv`).
* no sign op at all: DingKe/pytorch_workplace ``binary/functions.py`` ``BinarizeF`` writes
  ``+1``/``-1`` through boolean masks into ``input.new(input.size())``, for weights and
  activations; ``binary/modules.py`` hangs ``lr_scale`` on the weight Parameter and
  ``binary/cnn.py`` builds one optimizer group per such parameter (:func:`lr_scale_step`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from .bireal import BinaryActivation


def _clipped_ste(binary, w):
    clipped = torch.clamp(w, -1.0, 1.0)
    return binary.detach() - clipped.detach() + clipped


class NumpyScalarConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)

    def forward(self, x):
        w = self.weight
        scale = w.abs().mean(dim=(1, 2, 3), keepdim=True).detach() / np.sqrt(2)
        binary = np.sqrt(2) * scale * torch.sign(w)
        return F.conv2d(x, _clipped_ste(binary, w), padding=1)


class FreshNormConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.out_chn = cout
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)

    def forward(self, x):
        w = self.weight
        binary = w.abs().mean(dim=(1, 2, 3), keepdim=True).detach() * w.sign()
        y = F.conv2d(x, _clipped_ste(binary, w), padding=1)
        return nn.BatchNorm2d(self.out_chn)(y)


class NumpyViewConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.shape = (cout, cin, 3, 3)
        self.number_of_weights = np.prod(self.shape)
        self.rows, self.cols = cout, np.prod(self.shape[1:])
        self.weights = nn.Parameter(torch.rand((self.number_of_weights, 1)) * 0.001)

    def forward(self, x):
        w = self.weights.view(self.rows, self.cols)
        scale = w.abs().mean(-1, keepdim=True).detach()
        binary = _clipped_ste(scale * torch.sign(w), w)
        return F.conv2d(x, binary.view(self.shape), padding=1)


class ShapeBranchConv(nn.Conv2d):
    def forward(self, input):
        if input.size(1) == 3:
            return self._conv_forward(input, self.weight, self.bias)
        w = self.weight
        bw = w + (torch.sign(w) - w).detach()
        return self._conv_forward(input, bw, self.bias)


class GroupSliceConv(nn.Module):
    def __init__(self, cin, cout, weight_groups=2):
        super().__init__()
        self.weight_groups = weight_groups
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)

    def forward(self, x):
        w = self.weight
        bw = torch.zeros_like(w)
        size = w.size(0) // self.weight_groups
        for g in range(self.weight_groups):
            rows = slice(g * size, (g + 1) * size)
            alpha = w[rows].abs().mean().detach()
            bw[rows] = alpha * torch.sign(w[rows])
        return F.conv2d(x, bw.detach() - w.detach() + w, padding=1)


class PatternNet(nn.Module):
    """One misc layer between a real stem and head, with a Bi-Real activation sign before it."""

    def __init__(self, layer, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = BinaryActivation()
        self.layer = layer
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer(self.act(self.bn(self.stem(x))))
        return self.head(torch.flatten(self.pool(x), 1))


class ShapeBranchNet(nn.Module):
    """Three ShapeBranchConv: the first sees RGB and stays real, the others are binary."""

    def __init__(self, classes=10):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                ShapeBranchConv(3, 8, 3, padding=1, bias=False),
                ShapeBranchConv(8, 16, 3, padding=1, bias=False),
                ShapeBranchConv(16, 16, 3, stride=2, padding=1, bias=False),
            ]
        )
        self.bns = nn.ModuleList([nn.BatchNorm2d(c) for c in (8, 16, 16)])
        self.act = BinaryActivation()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = self.act(bn(conv(x)))
        return self.head(x.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- DingKe


class BinarizeF(Function):
    @staticmethod
    def forward(ctx, input):
        output = input.new(input.size())
        output[input >= 0] = 1
        output[input < 0] = -1
        return output

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.clone()


binarize = BinarizeF.apply


class BinaryTanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.hardtanh = nn.Hardtanh()

    def forward(self, input):
        return binarize(self.hardtanh(input))


def _glorot_with_lr_scale(weight, fan_in, fan_out, bias):
    stdv = math.sqrt(1.5 / (fan_in + fan_out))
    weight.data.uniform_(-stdv, stdv)
    if bias is not None:
        bias.data.zero_()
    weight.lr_scale = 1.0 / stdv


class BinaryLinear(nn.Linear):
    def forward(self, input):
        binary_weight = binarize(self.weight)
        return F.linear(input, binary_weight, self.bias)

    def reset_parameters(self):
        out_features, in_features = self.weight.size()
        _glorot_with_lr_scale(self.weight, in_features, out_features, self.bias)


class BinaryConv2d(nn.Conv2d):
    def forward(self, input):
        bw = binarize(self.weight)
        return F.conv2d(input, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def reset_parameters(self):
        fan_in, fan_out = self.in_channels, self.out_channels
        for k in self.kernel_size:
            fan_in *= k
            fan_out *= k
        _glorot_with_lr_scale(self.weight, fan_in, fan_out, self.bias)


class MaskedCNN(nn.Module):
    """``binary/cnn.py`` at 8x8: binary conv, BN, pool, BinaryTanh (twice), binary linear."""

    def __init__(self, classes=10):
        super().__init__()
        self.layer1 = nn.Sequential(
            BinaryConv2d(3, 8, kernel_size=5, padding=2),
            nn.BatchNorm2d(8, momentum=0.9, eps=1e-6),
            nn.MaxPool2d(2),
            BinaryTanh(),
        )
        self.layer2 = nn.Sequential(
            BinaryConv2d(8, 16, kernel_size=5, padding=2),
            nn.BatchNorm2d(16, momentum=0.9, eps=1e-6),
            nn.MaxPool2d(2),
            BinaryTanh(),
        )
        self.fc = BinaryLinear(2 * 2 * 16, classes)

    def forward(self, x):
        out = self.layer2(self.layer1(x))
        return self.fc(out.view(out.size(0), -1))


def scale_lr(parameters, lr):
    """One optimizer group per parameter carrying ``lr_scale``, the rest in a last group."""
    groups, others = [], []
    for param in parameters:
        if hasattr(param, "lr_scale"):
            groups.append({"params": [param], "lr": lr * param.lr_scale})
        else:
            others.append(param)
    groups.append({"params": others})
    return groups


def lr_scale_step(model, optimizer, loss_fn):
    """``binary/cnn.py``'s loop: the optimizer is rebuilt from ``scale_lr`` (the given one only
    lends its learning rate); plain zero_grad / backward / step."""
    lr = optimizer.param_groups[0]["lr"]
    own = torch.optim.Adam(scale_lr(model.parameters(), lr), lr=lr)

    def step(inputs, target):
        own.zero_grad()
        loss = loss_fn(model(*inputs), target)
        loss.backward()
        own.step()
        return loss.detach()

    step.optimizer = own
    return step


# ----------------------------------------------------------------------------- factories


def make_numpy_scalar():
    torch.manual_seed(0)
    return PatternNet(NumpyScalarConv(8, 16))


def make_fresh_norm():
    torch.manual_seed(0)
    return PatternNet(FreshNormConv(8, 16))


def make_numpy_view():
    torch.manual_seed(0)
    return PatternNet(NumpyViewConv(8, 16))


def make_group_slices():
    torch.manual_seed(0)
    return PatternNet(GroupSliceConv(8, 16))


def make_shape_branch():
    torch.manual_seed(0)
    return ShapeBranchNet()


def make_masked():
    torch.manual_seed(0)
    return MaskedCNN()
