"""BinaryNet.pytorch (itayhubara) in its two generations of ``models/binarized_modules.py``.

*classic* (the file as it stood up to commit d194d99, read at ``HEAD~1``): the layer binarizes by
side effect. The latent weight lives in a plain tensor attribute ``org`` hung on the Parameter
itself (created lazily on the first forward), and every forward overwrites ``weight.data`` with
``org.sign()``. Forward has no autograd path to the latent at all: the gradient taken w.r.t. the
binary ``weight`` is applied to the latent by the training loop (``main_binary.py`` /
``main_mnist.py``), which copies ``org`` back into ``data`` before ``optimizer.step()`` and stores
the clamped result in ``org`` after it. That loop is :func:`org_restore_step`.

*v2* (commit 80f6d46, Nov 2023, "adding support for pytorch2", the repository's HEAD): an
``InplaceFunction`` whose ``forward(ctx, ...)`` is *not* a staticmethod, called through a helper
``binarized()``; the weight is a plain Parameter again and ``main_binary.py`` lost its restore
loop. ``bias.org`` is still written on every forward.

Both keep the first layer's input real with a Python branch on the input shape
(``input.size(1) != 3`` in the convs, ``!= 784`` in the MNIST linears); the weight of that first
layer is binarized all the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import InplaceFunction

# ----------------------------------------------------------------------------- classic


def Binarize(tensor, quant_mode="det"):
    """Deterministic binarization is ``tensor.sign()`` (method spelling, zero stays zero)."""
    if quant_mode == "det":
        return tensor.sign()
    # stochastic mode (unused by every upstream model): +1 with probability (x + 1) / 2
    prob = tensor.add(1).div(2).clamp(0, 1)
    return torch.bernoulli(prob).mul(2).sub(1)


class BinarizeLinearClassic(nn.Linear):
    """``BinarizeLinear`` before 2023: ``weight.data = Binarize(weight.org)``, input likewise
    through ``.data`` unless it is the 784-wide MNIST input."""

    def forward(self, input):
        if input.size(1) != 784:
            input.data = Binarize(input.data)
        if not hasattr(self.weight, "org"):
            self.weight.org = self.weight.data.clone()
        self.weight.data = Binarize(self.weight.org)
        out = F.linear(input, self.weight)
        if self.bias is not None:
            self.bias.org = self.bias.data.clone()
            out += self.bias.view(1, -1).expand_as(out)
        return out


class BinarizeConv2dClassic(nn.Conv2d):
    """``BinarizeConv2d`` before 2023: same side-effect binarization; the RGB input stays real."""

    def forward(self, input):
        if input.size(1) != 3:
            input.data = Binarize(input.data)
        if not hasattr(self.weight, "org"):
            self.weight.org = self.weight.data.clone()
        self.weight.data = Binarize(self.weight.org)
        out = F.conv2d(
            input, self.weight, None, self.stride, self.padding, self.dilation, self.groups
        )
        if self.bias is not None:
            self.bias.org = self.bias.data.clone()
            out += self.bias.view(1, -1, 1, 1).expand_as(out)
        return out


# ----------------------------------------------------------------------------- v2 (HEAD)


class BinarizeV2(InplaceFunction):
    """HEAD's ``Binarize``: an InplaceFunction with *non-static* ``forward``/``backward`` taking
    ``ctx`` first (accepted by ``Function.apply``); identity STE backward, no clipping."""

    def forward(ctx, input, quant_mode="det", allow_scale=False, inplace=False):
        ctx.inplace = inplace
        if ctx.inplace:
            ctx.mark_dirty(input)
            output = input
        else:
            output = input.clone()
        scale = output.abs().max() if allow_scale else 1
        if quant_mode == "det":
            return output.div(scale).sign().mul(scale)
        noise = torch.rand(output.size()).add(-0.5)
        return output.div(scale).add(1).div(2).add(noise).clamp(0, 1).round().mul(2).sub(1)

    def backward(ctx, grad_output):
        return grad_output, None, None, None


def binarized(input, quant_mode="det"):
    return BinarizeV2.apply(input, quant_mode)


class BinarizeLinearV2(nn.Linear):
    """HEAD's ``BinarizeLinear``. As upstream, ``input_b`` is unbound when the input is 784
    wide (an UnboundLocalError on MNIST's first layer); the models here never feed it 784."""

    def forward(self, input):
        if input.size(1) != 784:
            input_b = binarized(input)
        weight_b = binarized(self.weight)
        out = F.linear(input_b, weight_b)
        if self.bias is not None:
            self.bias.org = self.bias.data.clone()
            out += self.bias.view(1, -1).expand_as(out)
        return out


class BinarizeConv2dV2(nn.Conv2d):
    """HEAD's ``BinarizeConv2d``: Function on both, the RGB input kept real by a shape branch."""

    def forward(self, input):
        if input.size(1) != 3:  # noqa: SIM108 - upstream writes the branch as a statement
            input_b = binarized(input)
        else:
            input_b = input
        weight_b = binarized(self.weight)
        out = F.conv2d(
            input_b, weight_b, None, self.stride, self.padding, self.dilation, self.groups
        )
        if self.bias is not None:
            self.bias.org = self.bias.data.clone()
            out += self.bias.view(1, -1, 1, 1).expand_as(out)
        return out


# ----------------------------------------------------------------------------- models


class VGGCifarBinary(nn.Module):
    """``vgg_cifar10_binary`` cut down to two binary convs and two binary linears (8x8 input).

    Upstream order: conv, (pool), BN, Hardtanh(inplace); the classifier ends in a binary linear,
    an affine-free BatchNorm1d and LogSoftmax.
    """

    def __init__(self, conv=BinarizeConv2dClassic, linear=BinarizeLinearClassic, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            conv(3, 8, kernel_size=3, stride=1, padding=1, bias=True),
            nn.BatchNorm2d(8),
            nn.Hardtanh(inplace=True),
            conv(8, 16, kernel_size=3, padding=1, bias=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.BatchNorm2d(16),
            nn.Hardtanh(inplace=True),
        )
        self.classifier = nn.Sequential(
            linear(16 * 4 * 4, 16, bias=True),
            nn.BatchNorm1d(16),
            nn.Hardtanh(inplace=True),
            linear(16, classes, bias=True),
            nn.BatchNorm1d(classes, affine=False),
            nn.LogSoftmax(dim=1),
        )

    def forward(self, x):
        x = self.features(x)
        x = x.view(-1, 16 * 4 * 4)
        return self.classifier(x)


class MnistBinaryMLP(nn.Module):
    """``main_mnist.py``'s ``Net``: three classic BinarizeLinear (the first sees the raw 784-wide
    input, kept real by the ``!= 784`` branch), dropout before the third BN, a real last layer."""

    def __init__(self, hidden=16):
        super().__init__()
        self.fc1 = BinarizeLinearClassic(784, hidden)
        self.htanh1 = nn.Hardtanh()
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = BinarizeLinearClassic(hidden, hidden)
        self.htanh2 = nn.Hardtanh()
        self.bn2 = nn.BatchNorm1d(hidden)
        self.fc3 = BinarizeLinearClassic(hidden, hidden)
        self.htanh3 = nn.Hardtanh()
        self.bn3 = nn.BatchNorm1d(hidden)
        self.fc4 = nn.Linear(hidden, 10)
        self.logsoftmax = nn.LogSoftmax(dim=1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        x = self.htanh1(self.bn1(self.fc1(x)))
        x = self.htanh2(self.bn2(self.fc2(x)))
        x = self.fc3(x)
        x = self.drop(x)
        x = self.htanh3(self.bn3(x))
        return self.logsoftmax(self.fc4(x))


def make_vgg_classic():
    torch.manual_seed(0)
    return VGGCifarBinary(BinarizeConv2dClassic, BinarizeLinearClassic)


def make_vgg_v2():
    torch.manual_seed(0)
    return VGGCifarBinary(BinarizeConv2dV2, BinarizeLinearV2)


def make_mnist_classic():
    torch.manual_seed(0)
    return MnistBinaryMLP()


def org_restore_step(model, optimizer, loss_fn):
    """The classic training loop: restore ``p.org`` before the step, store ``clamp(p)`` after.

    Parameters without ``org`` (BN, the real last layer) are stepped normally. Note that the
    biases get an ``org`` too (written on every forward), so they are clamped to [-1, 1].
    """

    def step(inputs, target):
        output = model(*inputs)
        loss = loss_fn(output, target)
        optimizer.zero_grad()
        loss.backward()
        for p in list(model.parameters()):
            if hasattr(p, "org"):
                p.data.copy_(p.org)
        optimizer.step()
        for p in list(model.parameters()):
            if hasattr(p, "org"):
                p.org.copy_(p.data.clamp_(-1, 1))
        return loss.detach()

    return step
