"""The paper's CIFAR backbone: a binary WRN-22 (k = 1) in two widths, Bi-Real style.

WRN-22 = a real-valued 3x3 stem, 3 stages x 3 blocks x 2 binary 3x3 convs, and a real-valued
classifier; with Bi-Real's layout every binary conv is a :class:`BinaryUnit` with its own
real-valued shortcut, and the two stage transitions use pooled 1x1 shortcut convs (WRN's depth
6N + 4 with N = 3: stem + 18 binary convs + 2 shortcut convs + classifier). Channel
configurations are written as in the paper, stem-stage1-stage2-stage3: 16-16-32-64 (0.27M
parameters) and 64-64-128-256 (4.3M).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timm.models import register_model
from torch import nn

from uabnn_convert.zoo._build import CIFAR_MEAN, CIFAR_STD, build
from uabnn_convert.zoo.resnet import BinaryResNet

__all__ = ["binary_wrn22"]

_CIFAR_CFG = {"input_size": (3, 32, 32), "mean": CIFAR_MEAN, "std": CIFAR_STD}


def binary_wrn22(
    channels: Sequence[int],
    family: str = "bireal",
    num_classes: int = 10,
    in_chans: int = 3,
) -> BinaryResNet:
    """A binary WRN-22 with ``channels = (stem, stage1, stage2, stage3)``.

    ``family`` picks the binarizers (``"bireal"`` by default, as in the paper's Table 1; the
    XNOR, BONN, IR-Net and ReActNet families fit the same layout).
    """
    if len(channels) != 4:
        raise ValueError(f"WRN-22 needs 4 channel numbers (stem + 3 stages), got {channels}")
    stem, *stages = channels
    return BinaryResNet(
        family,
        (6, 6, 6),
        stages,
        stem="cifar",
        stem_width=stem,
        shortcut="conv",
        num_classes=num_classes,
        in_chans=in_chans,
    )


@register_model
def wrn22_16(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Binary WRN-22 16-16-32-64 (the paper's 0.27M CIFAR model)."""

    def ctor(**kw: Any) -> BinaryResNet:
        return binary_wrn22((16, 16, 32, 64), **kw)

    return build("wrn22_16", pretrained, kwargs, ctor, _CIFAR_CFG)


@register_model
def wrn22_64(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Binary WRN-22 64-64-128-256 (the paper's 4.3M CIFAR model)."""

    def ctor(**kw: Any) -> BinaryResNet:
        return binary_wrn22((64, 64, 128, 256), **kw)

    return build("wrn22_64", pretrained, kwargs, ctor, _CIFAR_CFG)
