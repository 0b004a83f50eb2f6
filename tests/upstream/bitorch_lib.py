"""hpi-xnor/bitorch: ``bitorch/quantizations/{base,sign}.py``, ``bitorch/layers/qconv2d.py``,
``bitorch/layers/qactivation.py``, ``bitorch/layers/qlinear.py``.

A quantization is an ``nn.Module`` (``Quantization``) whose ``forward`` calls ``quantize``; the
"sign" quantization applies ``SignFunction``, an ``STE`` Function (identity backward, no clip)
whose forward is ``torch.sign`` followed by ``torch.where(sign == 0, torch.tensor(1.0), sign)``
(zero maps to +1). ``QConv2d_NoAct`` keeps it as a child module ``self._weight_quantize`` and
calls it on ``self.weight`` inside ``conv2d(...)``; the input is padded with -1 (``pad_value``)
instead of zero. ``QConv2d`` adds ``self.activation = QActivation(...)``, a
``GradientCancellation`` identity Function (zero gradient where |x| > threshold) followed by
*the same kind* of ``Sign`` module: weight and activation quantizers share a class and differ
only by where they sit.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import Function
from torch.nn.functional import conv2d, linear, pad


class STE(Function):
    @staticmethod
    def forward(ctx, input_tensor):
        raise NotImplementedError("subclasses define the forward")

    @staticmethod
    def backward(ctx, output_gradient):
        return output_gradient


class SignFunction(STE):
    @staticmethod
    def forward(ctx, input_tensor):
        sign_tensor = torch.sign(input_tensor)
        return torch.where(
            sign_tensor == 0, torch.tensor(1.0, device=sign_tensor.device), sign_tensor
        )


class Quantization(nn.Module):
    name = "None"
    bit_width = -1

    def quantize(self, x):
        raise NotImplementedError()

    def forward(self, x):
        return self.quantize(x)


class Sign(Quantization):
    name = "sign"
    bit_width = 1

    def quantize(self, x):
        return SignFunction.apply(x)


class GradientCancellation(Function):
    @staticmethod
    def forward(ctx, input_tensor, threshold):
        ctx.save_for_backward(input_tensor, torch.tensor(threshold, device=input_tensor.device))
        return input_tensor

    @staticmethod
    def backward(ctx, output_grad):
        input_tensor, threshold = ctx.saved_tensors
        cancelled = torch.where(
            torch.abs(input_tensor) <= threshold,
            output_grad,
            torch.tensor(0.0, device=output_grad.device),
        )
        return cancelled, None


class QActivation(nn.Module):
    def __init__(self, activation=None, gradient_cancellation_threshold=1.0):
        super().__init__()
        self.activation_function = activation or Sign()
        self.gradient_cancellation_threshold = gradient_cancellation_threshold

    def forward(self, input_tensor):
        if self.gradient_cancellation_threshold > 0:
            input_tensor = GradientCancellation.apply(
                input_tensor, self.gradient_cancellation_threshold
            )
        return self.activation_function(input_tensor)


class QConv2d_NoAct(nn.Conv2d):
    def __init__(self, *args, weight_quantization=None, pad_value=None, bias=False, **kwargs):
        assert bias is False, "QConv layers have no bias"
        kwargs["bias"] = False
        super().__init__(*args, **kwargs)
        self._weight_quantize = weight_quantization or Sign()
        self._pad_value = pad_value or -1.0

    def _apply_padding(self, x):
        return pad(x, self._reversed_padding_repeated_twice, mode="constant", value=self._pad_value)

    def reset_parameters(self):
        nn.init.xavier_normal_(self.weight)

    def forward(self, input):
        return conv2d(
            input=self._apply_padding(input),
            weight=self._weight_quantize(self.weight),
            bias=None,
            stride=self.stride,
            padding=0,
            dilation=self.dilation,
            groups=self.groups,
        )


class QConv2d(QConv2d_NoAct):
    def __init__(
        self, *args, input_quantization=None, gradient_cancellation_threshold=1.0, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.activation = QActivation(input_quantization, gradient_cancellation_threshold)

    def forward(self, input_tensor):
        return super().forward(self.activation(input_tensor))


class QLinear(nn.Linear):
    """``QLinear``: activation then ``linear(x, self.weight_quantization(self.weight), bias)``."""

    def __init__(
        self,
        *args,
        input_quantization=None,
        weight_quantization=None,
        gradient_cancellation_threshold=1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.weight_quantization = weight_quantization or Sign()
        self.activation = QActivation(input_quantization, gradient_cancellation_threshold)

    def forward(self, x):
        return linear(self.activation(x), self.weight_quantization(self.weight), self.bias)


class Net(nn.Module):
    """Real stem and head around two QConv2d and one QLinear (LeNet-like ordering)."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = QConv2d(8, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = QConv2d(16, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = QLinear(16 * 4 * 4, 16)
        self.bn3 = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = self.bn1(self.conv1(x))
        x = self.bn2(self.conv2(x))
        x = self.bn3(self.fc1(torch.flatten(x, 1)))
        return self.head(x)


def make_net():
    torch.manual_seed(0)
    return Net()
