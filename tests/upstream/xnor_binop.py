"""jiecaoyu/XNOR-Net-PyTorch: the weights are binarized by the *training loop*, not in forward.

``CIFAR_10/util.py``'s ``BinOp`` holds the conv weights to binarize (every ``nn.Conv2d`` but the
first and the last, picked by index through ``numpy.linspace``) and, around each step:

* ``binarization()``: mean-centres each kernel over the input channels, clamps to [-1, 1] (both
  written back into ``weight.data``, so the latent itself drifts), saves a copy, and overwrites
  ``weight.data`` with ``sign(W) * mean|W|`` (per output channel, via ``norm(1, 3)``);
* ``restore()``: copies the saved latent back into ``weight.data`` after ``backward()``;
* ``updateBinaryGradWeight()``: rescales ``weight.grad`` for the mean-|W| factor before the step.

The layers themselves (``BinConv2d``: BN, activation sign, dropout, a plain ``nn.Conv2d``, ReLU)
contain no weight sign, so a forward-only converter finds nothing; the only sign in forward is
the activation's ``BinActive``. Upstream calls ``BinActive()(x)`` on a legacy Function with a
non-static forward, which PyTorch >= 1.5 refuses; it is modernised to ``BinActive.apply`` here,
keeping its two outputs (the sign and the channel mean |x|, unused).
"""

from __future__ import annotations

import numpy
import torch
from torch import nn


class BinActive(torch.autograd.Function):
    """Activation sign with the clipped identity backward; also returns mean |x| over channels."""

    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        mean = torch.mean(input.abs(), 1, keepdim=True)
        return input.sign(), mean

    @staticmethod
    def backward(ctx, grad_output, grad_output_mean):
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input.ge(1)] = 0
        grad_input[input.le(-1)] = 0
        return grad_input


class BinConv2d(nn.Module):
    """BN -> BinActive -> (dropout) -> real ``nn.Conv2d`` -> ReLU, as in the NIN of CIFAR_10."""

    def __init__(
        self, input_channels, output_channels, kernel_size=-1, stride=-1, padding=-1, dropout=0
    ):
        super().__init__()
        self.layer_type = "BinConv2d"
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dropout_ratio = dropout
        self.bn = nn.BatchNorm2d(input_channels, eps=1e-4, momentum=0.1, affine=True)
        self.bn.weight.data = self.bn.weight.data.zero_().add(1.0)
        if dropout != 0:
            self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv2d(
            input_channels, output_channels, kernel_size=kernel_size, stride=stride, padding=padding
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.bn(x)
        x, _mean = BinActive.apply(x)
        if self.dropout_ratio != 0:
            x = self.dropout(x)
        x = self.conv(x)
        return self.relu(x)


class NIN(nn.Module):
    """The CIFAR_10 network-in-network, 16 channels wide and 8x8: real first and last conv."""

    def __init__(self):
        super().__init__()
        self.xnor = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=5, stride=1, padding=2),
            nn.BatchNorm2d(16, eps=1e-4, momentum=0.1, affine=False),
            nn.ReLU(inplace=True),
            BinConv2d(16, 16, kernel_size=1, stride=1, padding=0),
            BinConv2d(16, 16, kernel_size=3, stride=1, padding=1, dropout=0.5),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            BinConv2d(16, 16, kernel_size=1, stride=1, padding=0),
            nn.BatchNorm2d(16, eps=1e-4, momentum=0.1, affine=False),
            nn.Conv2d(16, 10, kernel_size=1, stride=1, padding=0),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(kernel_size=4, stride=1, padding=0),
        )

    def forward(self, x):
        # upstream clamps every affine BN scale from below inside forward, through .data
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and hasattr(m.weight, "data"):
                m.weight.data.clamp_(min=0.01)
        x = self.xnor(x)
        return x.view(x.size(0), 10)


class BinOp:
    """The weight binarizer that lives outside the model (``util.BinOp``)."""

    def __init__(self, model):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        start_range = 1
        end_range = len(convs) - 2
        self.bin_range = (
            numpy.linspace(start_range, end_range, end_range - start_range + 1)
            .astype("int")
            .tolist()
        )
        self.num_of_params = len(self.bin_range)
        self.saved_params = []
        self.target_modules = []
        for index, m in enumerate(convs):
            if index in self.bin_range:
                self.saved_params.append(m.weight.data.clone())
                self.target_modules.append(m.weight)

    def binarization(self):
        self.meancenterConvParams()
        self.clampConvParams()
        self.save_params()
        self.binarizeConvParams()

    def meancenterConvParams(self):
        for index in range(self.num_of_params):
            data = self.target_modules[index].data
            neg_mean = data.mean(1, keepdim=True).mul(-1).expand_as(data)
            self.target_modules[index].data = data.add(neg_mean)

    def clampConvParams(self):
        for index in range(self.num_of_params):
            self.target_modules[index].data = self.target_modules[index].data.clamp(-1.0, 1.0)

    def save_params(self):
        for index in range(self.num_of_params):
            self.saved_params[index].copy_(self.target_modules[index].data)

    def binarizeConvParams(self):
        for index in range(self.num_of_params):
            data = self.target_modules[index].data
            n = data[0].nelement()
            s = data.size()
            m = data.norm(1, 3, keepdim=True).sum(2, keepdim=True).sum(1, keepdim=True).div(n)
            self.target_modules[index].data = data.sign().mul(m.expand(s))

    def restore(self):
        for index in range(self.num_of_params):
            self.target_modules[index].data.copy_(self.saved_params[index])

    def updateBinaryGradWeight(self):
        for index in range(self.num_of_params):
            weight = self.target_modules[index].data
            grad = self.target_modules[index].grad.data
            n = weight[0].nelement()
            s = weight.size()
            m = weight.norm(1, 3, keepdim=True).sum(2, keepdim=True).sum(1, keepdim=True)
            # upstream writes into this expanded view (PyTorch warns, the mask is empty anyway:
            # the latent was clamped to [-1, 1] by binarization())
            m = m.div(n).expand(s)
            m[weight.lt(-1.0)] = 0
            m[weight.gt(1.0)] = 0
            m = m.mul(grad)
            m_add = weight.sign().mul(grad)
            m_add = m_add.sum(3, keepdim=True).sum(2, keepdim=True).sum(1, keepdim=True)
            m_add = m_add.div(n).expand(s).mul(weight.sign())
            self.target_modules[index].grad.data = m.add(m_add).mul(1.0 - 1.0 / s[1]).mul(n)


def make_nin():
    torch.manual_seed(0)
    return NIN()


def binop_step(model, optimizer, loss_fn):
    """``CIFAR_10/main.py``'s ``train()``: binarize, forward/backward, restore, rescale, step.

    Per step and per binarized conv this runs three weight signs: one that binarizes and two in
    the gradient rescaling.
    """
    bin_op = BinOp(model)

    def step(inputs, target):
        bin_op.binarization()
        optimizer.zero_grad()
        output = model(*inputs)
        loss = loss_fn(output, target)
        loss.backward()
        bin_op.restore()
        bin_op.updateBinaryGradWeight()
        optimizer.step()
        return loss.detach()

    step.bin_op = bin_op
    return step
