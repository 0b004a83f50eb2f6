"""Reference zoo of plain-PyTorch binary neural networks, registered with timm.

Each family binarizes its weights the way that method's official code does (Bi-Real Net,
ReActNet, IR-Net, BONN-style, XNOR-Net, BitNet's ``BitLinear``), so the conversion pass can be
tested against the patterns it will meet in the wild. Importing this package registers every
model in :data:`MODELS`, after which ``timm.create_model("bireal_resnet18", num_classes=10)``
works.
No pretrained weights exist: ``pretrained=True`` raises.
"""

from __future__ import annotations

from uabnn_convert.zoo.bitnet import BitLinear, BitNetTiny, bitnet_tiny
from uabnn_convert.zoo.digits import BiRealDigits, bireal_digits, digits_data
from uabnn_convert.zoo.fashion import BiRealFashion, bireal_fmnist, wrn22_16_fmnist
from uabnn_convert.zoo.layers import (
    BINARY_LAYER_TYPES,
    FAMILIES,
    BinaryActivation,
    BinaryLinear,
    BinaryQuantize,
    BinaryUnit,
    BiRealConv2d,
    BONNConv2d,
    IRConv2d,
    LearnableBias,
    ReActConv2d,
    RPReLU,
    RSign,
    XNORActivation,
    XNORConv2d,
    XNORWeightBinarize,
    binary_latents,
    set_ede,
)
from uabnn_convert.zoo.resnet import (
    BinaryResNet,
    bireal_resnet18,
    bireal_resnet34,
    bonn_resnet18,
    irnet_resnet18,
    irnet_resnet20,
    reactnet_resnet18,
    xnor_resnet18,
)
from uabnn_convert.zoo.wrn import binary_wrn22, wrn22_16, wrn22_64

MODELS: tuple[str, ...] = (
    "bireal_resnet18",
    "bireal_resnet34",
    "reactnet_resnet18",
    "irnet_resnet18",
    "bonn_resnet18",
    "xnor_resnet18",
    "irnet_resnet20",
    "wrn22_16",
    "wrn22_64",
    "bireal_digits",
    "bitnet_tiny",
    "bireal_fmnist",
    "wrn22_16_fmnist",
)
"""Names of every model the zoo registers with timm."""

__all__ = [
    "BINARY_LAYER_TYPES",
    "FAMILIES",
    "MODELS",
    "BONNConv2d",
    "BiRealConv2d",
    "BiRealDigits",
    "BiRealFashion",
    "BinaryActivation",
    "BinaryLinear",
    "BinaryQuantize",
    "BinaryResNet",
    "BinaryUnit",
    "BitLinear",
    "BitNetTiny",
    "IRConv2d",
    "LearnableBias",
    "RPReLU",
    "RSign",
    "ReActConv2d",
    "XNORActivation",
    "XNORConv2d",
    "XNORWeightBinarize",
    "binary_latents",
    "binary_wrn22",
    "bireal_digits",
    "bireal_fmnist",
    "bireal_resnet18",
    "bireal_resnet34",
    "bitnet_tiny",
    "bonn_resnet18",
    "digits_data",
    "irnet_resnet18",
    "irnet_resnet20",
    "reactnet_resnet18",
    "set_ede",
    "wrn22_16",
    "wrn22_16_fmnist",
    "wrn22_64",
    "xnor_resnet18",
]
