"""1adrianb/binary-networks-pytorch (the ``bnn`` package): ``bnn/ops.py``, ``bnn/bconfig.py``,
``bnn/layers/conv.py``, ``bnn/layers/linear.py``, ``bnn/binarize.py``.

A float model is converted module by module: ``prepare_binary_model`` swaps every ``nn.Conv2d`` /
``nn.Linear`` (minus ignored names) for ``bnn.Conv2d`` / ``bnn.Linear`` built by ``from_module``,
which *shares* the original ``weight`` Parameter. The binary layer's forward is
``activation_post_process(conv(activation_pre_process(x), weight_pre_process(self.weight)), x)``
-- the weight is binarized by a **child module** (``weight_pre_process``), the input by another;
both are instances of classes named in a ``BConfig`` dataclass. ``XNORWeightBinarizer`` computes
``alpha = |W|_1 / n`` per output channel with ``norm(1, 3)`` + ``sum``, branching in Python on
``x.dim()``, and returns ``SignActivation.apply(x).mul_(alpha.expand_as(x))`` (an in-place
multiply on the Function output; ``alpha`` is *not* detached). ``SignActivation`` -- ``Tensor.sign``
forward, hardtanh STE backward -- serves weights and activations alike: only the attribute name
tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class SignActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return input.sign()

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input.masked_fill_(input.ge(1) | input.le(-1), 0)
        return grad_input


class XNORWeightBinarizer(nn.Module):
    def __init__(self, compute_alpha=True, center_weights=False):
        super().__init__()
        self.compute_alpha = compute_alpha
        self.center_weights = center_weights

    @classmethod
    def with_args(cls, **kwargs):
        """A class factory with bound arguments, for ``BConfig`` (which takes classes)."""
        return partial(cls, **kwargs)

    def _compute_alpha(self, x):
        n = x[0].nelement()
        if x.dim() == 4:
            alpha = x.norm(1, 3, keepdim=True).sum([2, 1], keepdim=True).div_(n)
        elif x.dim() == 3:
            alpha = x.norm(1, 2, keepdim=True).sum([1], keepdim=True).div_(n)
        elif x.dim() == 2:
            alpha = x.norm(1, 1, keepdim=True).div_(n)
        else:
            raise ValueError(f"XNOR alpha needs a 2-D, 3-D or 4-D weight, got {x.dim()}-D")
        return alpha

    def forward(self, x):
        if self.center_weights:
            x = x.sub(x.mean(1, keepdim=True).expand_as(x))
        if self.compute_alpha:
            alpha = self._compute_alpha(x)
            return SignActivation.apply(x).mul_(alpha.expand_as(x))
        return SignActivation.apply(x)


class BasicInputBinarizer(nn.Module):
    def forward(self, x):
        return SignActivation.apply(x)


class Identity(nn.Identity):
    """``activation_post_process`` default: takes ``(layer_out, layer_in)``."""

    def forward(self, layer_out, layer_in):
        return layer_out


@dataclass
class BConfig:
    activation_pre_process: type = nn.Identity
    activation_post_process: type = Identity
    weight_pre_process: type = nn.Identity


class Conv2d(nn.Conv2d):
    def __init__(self, *args, bconfig=None, **kwargs):
        super().__init__(*args, **kwargs)
        assert bconfig, "a binary layer needs a BConfig"
        self.bconfig = bconfig
        self.activation_pre_process = bconfig.activation_pre_process()
        self.activation_post_process = bconfig.activation_post_process(self)
        self.weight_pre_process = bconfig.weight_pre_process()

    def forward(self, input):
        input_proc = self.activation_pre_process(input)
        input_proc = self._conv_forward(
            input_proc, self.weight_pre_process(self.weight), bias=self.bias
        )
        return self.activation_post_process(input_proc, input)

    @classmethod
    def from_module(cls, mod, bconfig):
        new = cls(
            mod.in_channels,
            mod.out_channels,
            mod.kernel_size,
            stride=mod.stride,
            padding=mod.padding,
            dilation=mod.dilation,
            groups=mod.groups,
            bias=mod.bias is not None,
            padding_mode=mod.padding_mode,
            bconfig=bconfig,
        )
        new.weight = mod.weight
        new.bias = mod.bias
        return new


class Linear(nn.Linear):
    def __init__(self, in_features, out_features, bias=True, bconfig=None):
        super().__init__(in_features, out_features, bias)
        assert bconfig, "a binary layer needs a BConfig"
        self.bconfig = bconfig
        self.activation_pre_process = bconfig.activation_pre_process()
        self.activation_post_process = bconfig.activation_post_process(self)
        self.weight_pre_process = bconfig.weight_pre_process()

    def forward(self, input):
        input_proc = self.activation_pre_process(input)
        out = F.linear(input_proc, self.weight_pre_process(self.weight), self.bias)
        return self.activation_post_process(out, input)

    @classmethod
    def from_module(cls, mod, bconfig):
        new = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, bconfig=bconfig)
        new.weight = mod.weight
        new.bias = mod.bias
        return new


MODULE_MAPPING = {nn.Conv2d: Conv2d, nn.Linear: Linear}


def prepare_binary_model(model, bconfig, ignore_layers_name=()):
    """Swap every mapped float layer not named in ``ignore_layers_name`` (names as in
    ``named_modules``) for its binary twin, in place."""
    for name, module in list(model.named_modules()):
        if type(module) not in MODULE_MAPPING or name in ignore_layers_name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, MODULE_MAPPING[type(module)].from_module(module, bconfig))
    return model


class FloatNet(nn.Module):
    """A plain float CNN, as a user would hand it to ``prepare_binary_model``.

    The binary layers are all convolutions: upstream's 2-D alpha,
    ``x.norm(1, 1, keepdim=True).div_(n)``, divides the norm's output in place, which the
    backward of ``torch.linalg.vector_norm`` needs, so a binarized ``nn.Linear`` fails in
    ``backward()`` on current PyTorch (see ``test_bnn_linear_alpha_breaks_backward``).
    """

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.features = nn.Sequential(
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.Conv2d(16, 16, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


def make_xnor_net():
    """``examples/recepies/xnor-net.yaml``'s configuration: XNOR weights (centred, with alpha),
    sign inputs; the first and last layer stay real (upstream: ``['_last_', '_first_']``)."""
    torch.manual_seed(0)
    bconfig = BConfig(
        activation_pre_process=BasicInputBinarizer,
        activation_post_process=Identity,
        weight_pre_process=XNORWeightBinarizer.with_args(compute_alpha=True, center_weights=True),
    )
    return prepare_binary_model(FloatNet(), bconfig, ignore_layers_name=("stem", "head"))
