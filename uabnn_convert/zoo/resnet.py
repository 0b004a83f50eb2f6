"""Bi-Real-style binary ResNets (ImageNet ResNet-18/34, CIFAR ResNet-20) for every family.

A "unit" is one binary 3x3 conv with BN and a real-valued shortcut (:class:`BinaryUnit`), so a
ResNet-18 has 4 units per stage (2 basic blocks x 2 convs) and a ResNet-34 has 6/8/12/6. The
first conv and the classifier stay real-valued, and shape-changing shortcuts are real-valued
1x1 convs after average pooling, as in Bi-Real Net.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models import register_model
from torch import nn

from uabnn_convert.zoo._build import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, build
from uabnn_convert.zoo.layers import FAMILIES, BinaryUnit

__all__ = ["BinaryResNet"]


class BinaryResNet(nn.Module):
    """A ResNet of :class:`BinaryUnit` stages with a real-valued stem and classifier.

    ``stem="imagenet"`` is the 7x7/stride-2 conv plus max-pool; ``stem="cifar"`` a 3x3 conv at
    full resolution. The first stage keeps the resolution, every later stage halves it in its
    first unit. ``shortcut`` picks Bi-Real's pooled 1x1 conv ("conv") or the CIFAR zero-pad
    ("pad"). The family decides the binarizers, the post-residual op, the stem nonlinearity and
    whether a BatchNorm1d precedes the classifier (IR-Net).
    """

    def __init__(
        self,
        family: str,
        units: Sequence[int],
        widths: Sequence[int],
        *,
        stem: str = "imagenet",
        stem_width: int | None = None,
        shortcut: str = "conv",
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
        if len(units) != len(widths) or not units:
            raise ValueError("units and widths must be non-empty and of equal length")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"unknown stem {stem!r}; expected 'imagenet' or 'cifar'")
        fam = FAMILIES[family]
        self.family = family
        self.num_classes = num_classes
        self.in_chans = in_chans
        width = widths[0] if stem_width is None else stem_width

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = fam.stem_act()
        self.maxpool = (
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            if stem == "imagenet"
            else nn.Identity()
        )

        stages = []
        for index, (count, out_width) in enumerate(zip(units, widths, strict=True)):
            stride = 1 if index == 0 else 2
            stage = []
            for unit_index in range(count):
                stage.append(
                    BinaryUnit(fam, width, out_width, stride if unit_index == 0 else 1, shortcut)
                )
                width = out_width
            stages.append(nn.Sequential(*stage))
        for index, stage in enumerate(stages, start=1):
            self.add_module(f"layer{index}", stage)
        self.num_stages = len(stages)

        self.num_features = width
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_norm = nn.BatchNorm1d(width) if fam.head_norm else nn.Identity()
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and binary stages, before pooling (timm's convention)."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool and the real-valued classifier."""
        x = torch.flatten(self.global_pool(x), 1)
        return self.fc(self.head_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The real-valued last layer (timm's convention)."""
        return self.fc


_RESNET18_UNITS = (4, 4, 4, 4)
_RESNET34_UNITS = (6, 8, 12, 6)
_IMAGENET_WIDTHS = (64, 128, 256, 512)
_IMAGENET_CFG = {"input_size": (3, 224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
_CIFAR_CFG = {"input_size": (3, 32, 32), "mean": CIFAR_MEAN, "std": CIFAR_STD}


def _imagenet(
    name: str, family: str, units: Sequence[int], pretrained: bool, kwargs: dict
) -> nn.Module:
    def ctor(widths: Sequence[int] = _IMAGENET_WIDTHS, **kw: Any) -> BinaryResNet:
        return BinaryResNet(family, units, widths, stem="imagenet", **kw)

    return build(name, pretrained, kwargs, ctor, _IMAGENET_CFG)


@register_model
def bireal_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Bi-Real Net ResNet-18: ``mean|W| * sign(W)`` with clip STE, ApproxSign activations."""
    return _imagenet("bireal_resnet18", "bireal", _RESNET18_UNITS, pretrained, kwargs)


@register_model
def bireal_resnet34(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Bi-Real Net ResNet-34 (6/8/12/6 binary units)."""
    return _imagenet("bireal_resnet34", "bireal", _RESNET34_UNITS, pretrained, kwargs)


@register_model
def reactnet_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ReActNet's ResNet-18 variant: RSign before, RPReLU after every binary conv.

    Weights are flat ``weights`` parameters viewed as kernels; eval mode takes the official
    second weight-sign path (see :class:`~uabnn_convert.zoo.layers.ReActConv2d`).
    """
    return _imagenet("reactnet_resnet18", "reactnet", _RESNET18_UNITS, pretrained, kwargs)


@register_model
def irnet_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """IR-Net ResNet-18: balanced weights, power-of-two scale, EDE gradients, Hardtanh.

    Call :func:`~uabnn_convert.zoo.layers.set_ede` once per epoch, as IR-Net's trainer does.
    """
    return _imagenet("irnet_resnet18", "irnet", _RESNET18_UNITS, pretrained, kwargs)


@register_model
def bonn_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """BONN-style ResNet-18: ``sign(W)`` times a learned per-channel scale."""
    return _imagenet("bonn_resnet18", "bonn", _RESNET18_UNITS, pretrained, kwargs)


@register_model
def xnor_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """XNOR-Net binarizers (autograd Functions, clipped STE) on the Bi-Real ResNet-18 layout."""
    return _imagenet("xnor_resnet18", "xnor", _RESNET18_UNITS, pretrained, kwargs)


@register_model
def irnet_resnet20(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """IR-Net's CIFAR ResNet-20 (16/32/64, 3 blocks of 2 units per stage, 0.27M parameters).

    As in IR-Net's CIFAR code: a full-resolution 3x3 stem with Hardtanh, zero-pad ("option A")
    shortcuts, and a BatchNorm1d before the classifier.
    """

    def ctor(num_classes: int = 10, **kw: Any) -> BinaryResNet:
        return BinaryResNet(
            "irnet",
            (6, 6, 6),
            (16, 32, 64),
            stem="cifar",
            shortcut="pad",
            num_classes=num_classes,
            **kw,
        )

    return build("irnet_resnet20", pretrained, kwargs, ctor, _CIFAR_CFG)
