"""Two Bi-Real BNNs for Fashion-MNIST (1x28x28, 10 classes), where sign and c-sign can differ.

On scikit-learn's digits every BNN here saturates near 99 %, so accuracy cannot tell two
binarizers apart. Fashion-MNIST (read from Debian's ``dataset-fashion-mnist`` files, see
``uabnn_convert.train.data``) keeps a small binary network well below saturation: 77.6 % for
``bireal_fmnist`` trained with sign on the 4,000-image subset of
``experiments/fashion_mnist.py`` (6 epochs), where a point of difference would show. Both models
follow the Bi-Real layout of the rest of the zoo: a real-valued 3x3 stem, binary 3x3 convs as
:class:`~uabnn_convert.zoo.layers.BinaryUnit` (each with its real-valued shortcut; a pooled 1x1
conv where the shape changes) and a real-valued classifier.

* ``bireal_fmnist`` — small and fast enough for many seeds on a CPU core.
* ``wrn22_16_fmnist`` — the paper's CIFAR WRN-22 16-16-32-64, with a one-channel stem.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models import register_model
from torch import nn

from uabnn_convert.zoo._build import build
from uabnn_convert.zoo.layers import BinaryUnit
from uabnn_convert.zoo.resnet import BinaryResNet
from uabnn_convert.zoo.wrn import binary_wrn22

__all__ = ["FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "BiRealFashion"]

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
_FASHION_CFG = {"input_size": (1, 28, 28), "mean": FASHION_MNIST_MEAN, "std": FASHION_MNIST_STD}


class BiRealFashion(nn.Module):
    """Real 3x3 stem and 2x2 max-pool (28 -> 14), binary stages, global pool, real classifier.

    ``widths`` and ``units`` give each stage's channels and number of Bi-Real units; every stage
    after the first halves the resolution in its first unit (14 -> 7 -> 4), whose shortcut is
    Bi-Real's average-pool + 1x1 conv + BN. The defaults (32 then 64 channels, 2 units each) make
    4 binary convs, 73,728 binary weights and 77,290 parameters in all.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64),
        units: Sequence[int] = (2, 2),
    ) -> None:
        super().__init__()
        if len(widths) != len(units) or not widths or min(units) < 1:
            raise ValueError(f"widths {widths} and units {units}: equal lengths, >= 1 unit each")
        self.num_classes = num_classes
        self.in_chans = in_chans
        width = widths[0]
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(2)
        self.num_stages = len(widths)
        for index, (count, out_width) in enumerate(zip(units, widths, strict=True), start=1):
            stride = 1 if index == 1 else 2
            stage = []
            for unit in range(count):
                stage.append(BinaryUnit("bireal", width, out_width, stride if unit == 0 else 1))
                width = out_width
            self.add_module(f"layer{index}", nn.Sequential(*stage))
        self.num_features = width
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and binary stages, before pooling (timm's convention)."""
        x = self.maxpool(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.global_pool(self.forward_features(x)), 1))

    def get_classifier(self) -> nn.Module:
        """The real-valued last layer (timm's convention)."""
        return self.fc


@register_model
def bireal_fmnist(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Bi-Real BNN for 1x28x28 Fashion-MNIST: 32-channel stem, units 32-32 (14x14) and
    64-64 (7x7), 77,290 parameters of which 73,728 are binary weights."""
    return build("bireal_fmnist", pretrained, kwargs, BiRealFashion, _FASHION_CFG)


@register_model
def wrn22_16_fmnist(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The paper's binary WRN-22 16-16-32-64 (Bi-Real units, first and last layer real-valued)
    adapted to 1x28x28 Fashion-MNIST.

    The adaptation is the input only: the real-valued 3x3 stem takes one channel instead of
    three (``binary_wrn22((16, 16, 32, 64), in_chans=1)``, 144 stem weights instead of 432), and
    the feature maps are 28 -> 14 -> 7 instead of CIFAR's 32 -> 16 -> 8 (stride-1 stem, the
    second and third stage halve the resolution; the stride-2 3x3 convs pad by 1 and the pooled
    shortcuts use ``ceil_mode``, so the even sizes line up as on CIFAR). Every binary layer, the
    shortcuts and the classifier are the CIFAR model's: 18 binary 3x3 convs (267,264 binary
    weights), 272,186 parameters (the CIFAR model's 272,474 less 288 stem weights).
    """

    def ctor(in_chans: int = 1, **kw: Any) -> BinaryResNet:
        return binary_wrn22((16, 16, 32, 64), in_chans=in_chans, **kw)

    return build("wrn22_16_fmnist", pretrained, kwargs, ctor, _FASHION_CFG)
