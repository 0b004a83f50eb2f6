"""BNN layers written the way their authors write them, for the conversion tests.

Each layer copies the spelling of a method's public code (``torch.sign`` vs ``Tensor.sign``,
STE by ``.detach()`` arithmetic, a custom ``autograd.Function`` instantiated before ``.apply``,
plain tensor attributes that a training loop reassigns, a flat parameter viewed as a kernel),
because the detection pass has to work on that code, not on a tidied version of it. The
activation binarizers are here too: a converter must leave them alone.

Every model here is small (8 channels, 8x8 inputs) so a test can train it for many steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- binarizers


class BinaryQuantize(torch.autograd.Function):
    """IR-Net's EDE binarizer (official code): sign forward, ``k·t·(1 - tanh²(t·x))`` backward."""

    @staticmethod
    def forward(ctx, input, k, t):  # type: ignore[override]
        ctx.save_for_backward(input, k, t)
        return torch.sign(input)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        input, k, t = ctx.saved_tensors
        grad_input = k * t * (1 - torch.pow(torch.tanh(input * t), 2)) * grad_output
        return grad_input, None, None


class XNORWeight(torch.autograd.Function):
    """XNOR-style weight binarizer: ``sign(W)·mean|W|`` inside forward, clipped STE backward."""

    @staticmethod
    def forward(ctx, weight):  # type: ignore[override]
        ctx.save_for_backward(weight)
        alpha = weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        return torch.sign(weight) * alpha

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return grad_output * (weight.abs() <= 1).to(grad_output.dtype)


class BinActive(torch.autograd.Function):
    """XNOR-Net's activation binarizer (``BinActive``): applied to the input, never a site."""

    @staticmethod
    def forward(ctx, input):  # type: ignore[override]
        ctx.save_for_backward(input)
        return input.sign()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input.ge(1)] = 0
        grad_input[input.le(-1)] = 0
        return grad_input


# ----------------------------------------------------------------------------- weight layers


class BiRealConv(nn.Module):
    """Bi-Real Net ``HardBinaryConv``: ``scale*sign(w)`` detached, minus/plus ``clamp(w)``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.05)

    def forward(self, x):
        real_weights = self.weight
        scaling_factor = torch.mean(
            torch.mean(torch.mean(abs(real_weights), dim=3, keepdim=True), dim=2, keepdim=True),
            dim=1,
            keepdim=True,
        )
        scaling_factor = scaling_factor.detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        return F.conv2d(x, binary_weights, stride=self.stride, padding=1)


class ReActConv(nn.Module):
    """ReActNet ``HardBinaryConv``: a flat ``weights`` parameter viewed as the kernel in forward
    (``self.weights.view(self.shape)``), Bi-Real arithmetic around the sign."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.shape = (cout, cin, 3, 3)
        self.number_of_weights = cin * cout * 9
        self.weights = nn.Parameter(torch.randn(self.number_of_weights, 1) * 0.05)

    def forward(self, x):
        real_weights = self.weights.view(self.shape)
        scaling_factor = torch.mean(
            torch.mean(torch.mean(abs(real_weights), dim=3, keepdim=True), dim=2, keepdim=True),
            dim=1,
            keepdim=True,
        )
        scaling_factor = scaling_factor.detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.5, 1.5)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        return F.conv2d(x, binary_weights, stride=1, padding=1)


class IRConvOfficial(nn.Conv2d):
    """IR-Net ``IRConv2d`` verbatim from the official repo (minus ``.cuda()``): plain tensor
    ``k``/``t`` attributes, Libra-PB balanced weight, ``torch.tensor([2]*bw.size(0))`` for the
    power-of-two scale, ``BinaryQuantize().apply`` on both the weight and the input."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1, bias=False)
        self.k = torch.tensor([10]).float()
        self.t = torch.tensor([0.1]).float()

    def forward(self, input):
        w = self.weight
        a = input
        bw = w - w.view(w.size(0), -1).mean(-1).view(w.size(0), 1, 1, 1)
        bw = bw / bw.view(bw.size(0), -1).std(-1).view(bw.size(0), 1, 1, 1)
        sw = (
            torch.pow(
                torch.tensor([2] * bw.size(0)).float(),
                (torch.log(bw.abs().view(bw.size(0), -1).mean(-1)) / math.log(2)).round().float(),
            )
            .view(bw.size(0), 1, 1, 1)
            .detach()
        )
        bw = BinaryQuantize().apply(bw, self.k, self.t)
        ba = BinaryQuantize().apply(a, self.k, self.t)
        bw = bw * sw
        return F.conv2d(ba, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)


class IRConv(IRConvOfficial):
    """The official IR-Net conv with one change: the power-of-two scale is built from a tensor
    (``2 * torch.ones_like``) instead of ``torch.tensor([2]*bw.size(0))``, a spelling that
    symbolic tracing cannot follow (see ``test_irnet_official_spelling_converts``)."""

    def forward(self, input):
        w = self.weight
        a = input
        bw = w - w.view(w.size(0), -1).mean(-1).view(w.size(0), 1, 1, 1)
        bw = bw / bw.view(bw.size(0), -1).std(-1).view(bw.size(0), 1, 1, 1)
        log_mean = torch.log(bw.abs().view(bw.size(0), -1).mean(-1)) / math.log(2)
        sw = torch.pow(2 * torch.ones_like(log_mean), log_mean.round().float())
        sw = sw.view(bw.size(0), 1, 1, 1).detach()
        bw = BinaryQuantize().apply(bw, self.k, self.t)
        ba = BinaryQuantize().apply(a, self.k, self.t)
        bw = bw * sw
        return F.conv2d(ba, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)


class XNORConv(nn.Module):
    """A conv whose weight goes through the :class:`XNORWeight` Function."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.05)

    def forward(self, x):
        return F.conv2d(x, XNORWeight.apply(self.weight), padding=1)


class SteSignLinear(nn.Linear):
    """``w.sign()`` (method spelling) with the textbook STE ``w + (w.sign() - w).detach()``."""

    def forward(self, x):
        w = self.weight
        bw = w + (w.sign() - w).detach()
        return F.linear(x, bw, self.bias)


class SharedSignConv(nn.Module):
    """One weight, two sign ops (two branches): two sites with two independent states."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.05)

    def forward(self, x):
        w = self.weight
        a = F.conv2d(x, w + (torch.sign(w) - w).detach(), padding=1)
        b = F.conv2d(x, (w.sign() - w).detach() + w, padding=1)
        return a + 0.5 * b


class TrainingBranchConv(nn.Module):
    """Binarizes differently by mode: an STE in training, a bare scaled sign in eval."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.05)

    def forward(self, x):
        w = self.weight
        if self.training:
            bw = w + (torch.sign(w) - w).detach()
            return F.conv2d(x, bw, padding=1)
        scale = w.abs().mean()
        return F.conv2d(x, torch.sign(w), padding=1) * scale


class PlainSignConv(nn.Module):
    """The bluntest spelling: ``torch.sign(self.weight)`` and nothing else (zero gradient)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.05)

    def forward(self, x):
        return F.conv2d(x, torch.sign(self.weight), padding=1)


class UntraceableBinaryConv(BiRealConv):
    """A binarizing layer whose own forward has data-dependent control flow (does not trace)."""

    def forward(self, x):
        if x.abs().max() > 1e6:
            x = x / x.abs().max()
        w = self.weight
        binary = (torch.sign(w) - torch.clamp(w, -1, 1)).detach() + torch.clamp(w, -1, 1)
        return F.conv2d(x, binary, padding=1)


class SignSTE(torch.autograd.Function):
    """The ``bnn`` library's ``SignActivation``: sign forward, hardtanh STE backward."""

    @staticmethod
    def forward(ctx, input):  # type: ignore[override]
        ctx.save_for_backward(input)
        return input.sign()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input.masked_fill_(input.ge(1) | input.le(-1), 0)
        return grad_input


class XNORWeightBinarizer(nn.Module):
    """The ``bnn`` library's weight binarizer module: ``sign(w)`` times the mean |w| per row."""

    def forward(self, x):
        alpha = x.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
        return SignSTE.apply(x) * alpha


class BasicInputBinarizer(nn.Module):
    """The ``bnn`` library's input binarizer module (an activation sign)."""

    def forward(self, x):
        return SignSTE.apply(x)


class PreProcessConv(nn.Conv2d):
    """1adrianb/binary-networks-pytorch (``bnn``) ``Conv2d``: the weight is binarized by a
    *child module*, ``self.weight_pre_process(self.weight)``, the input by another one."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1, bias=False)
        self.activation_pre_process = BasicInputBinarizer()
        self.weight_pre_process = XNORWeightBinarizer()

    def forward(self, input):
        input_proc = self.activation_pre_process(input)
        return self._conv_forward(input_proc, self.weight_pre_process(self.weight), bias=self.bias)


class MaskedBiRealConv(BiRealConv):
    """A binary layer with an optional argument: ``forward(x, mask=None)``."""

    def forward(self, x, mask=None):
        y = super().forward(x)
        if mask is not None:
            y = y * mask
        return y


# ----------------------------------------------------------------------------- activations


class SignActivation(nn.Module):
    """Bi-Real activation: ``torch.sign(x)`` with a polynomial STE by detach arithmetic."""

    def forward(self, x):
        out_forward = torch.sign(x)
        mask1 = x < -1
        mask2 = x < 0
        mask3 = x < 1
        out1 = (-1) * mask1.type(torch.float32) + (x * x + 2 * x) * (1 - mask1.type(torch.float32))
        out2 = out1 * mask2.type(torch.float32) + (-x * x + 2 * x) * (1 - mask2.type(torch.float32))
        out3 = out2 * mask3.type(torch.float32) + 1 * (1 - mask3.type(torch.float32))
        return out_forward.detach() - out3.detach() + out3


class BinActiveModule(nn.Module):
    """XNOR ``BinActive`` applied to the input: an activation Function, never a site."""

    def forward(self, x):
        return BinActive.apply(x)


# ----------------------------------------------------------------------------- models


class PatternNet(nn.Module):
    """Every weight-binarizer spelling above in one small net, with activation signs between.

    Input ``(N, 3, 8, 8)``. The real-valued stem and head are ordinary ``nn`` layers.
    """

    # (module name under ``layer``, expected family) per weight-sign site, in model order.
    EXPECTED_SITES = (
        ("layer.0", "bireal/reactnet"),
        ("layer.2", "irnet"),
        ("layer.4", "xnor"),
        ("layer.5", "bireal/reactnet"),
        ("layer.7", "generic"),  # SharedSignConv, first sign
        ("layer.7", "generic"),  # SharedSignConv, second sign
        ("layer.8", "generic"),  # TrainingBranchConv (one state shared by both modes)
        ("layer.9", "generic"),  # PlainSignConv
        ("head", "generic"),  # SteSignLinear
    )

    def __init__(self, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer = nn.Sequential(
            BiRealConv(width, width),  # 0
            SignActivation(),  # 1
            IRConv(width, width),  # 2
            BinActiveModule(),  # 3
            XNORConv(width, width),  # 4
            ReActConv(width, width),  # 5
            nn.BatchNorm2d(width),  # 6
            SharedSignConv(width, width),  # 7
            TrainingBranchConv(width, width),  # 8
            PlainSignConv(width, width),  # 9
            nn.Hardtanh(),  # 10
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = SteSignLinear(4 * width, classes)

    def forward(self, x):
        x = self.bn(self.stem(x))
        x = self.layer(x)
        return self.head(torch.flatten(self.pool(x), 1))


class DataDependentBlock(nn.Module):
    """A container whose forward branches on the data (``if x.sum() > 0``): fx cannot trace it,
    but its binary children can still be converted one by one."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.pos = BiRealConv(width, width)
        self.neg = BiRealConv(width, width)

    def forward(self, x):
        if x.sum() > 0:
            return self.pos(x)
        return self.neg(-x)


class ControlFlowNet(nn.Module):
    """A model that does not trace as a whole: a data-dependent container and a shape assert."""

    def __init__(self, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = DataDependentBlock(width)
        self.act = SignActivation()
        self.conv = BiRealConv(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        assert x.shape[1] == 3, "expects RGB"
        x = self.stem(x)
        x = self.act(self.block(x))
        x = self.conv(x)
        return self.head(x.mean(dim=(2, 3)))


class ActivationOnlyNet(nn.Module):
    """Binary activations only, real weights: no weight-sign site anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = SignActivation()
        self.act2 = BinActiveModule()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.act2(self.act(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


class SmallBiRealNet(nn.Module):
    """Three Bi-Real convs under ``layer`` and one under ``extra``: for include/override tests."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.layer = nn.Sequential(*(BiRealConv(width, width) for _ in range(3)))
        self.extra = BiRealConv(width, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = self.extra(self.layer(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))
