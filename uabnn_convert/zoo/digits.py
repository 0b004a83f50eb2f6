"""A tiny Bi-Real BNN for scikit-learn's 8x8 digits: a demo that trains in seconds on a CPU.

scikit-learn ships the digits data set (1797 images, 8x8, 10 classes), so nothing is
downloaded. :func:`digits_data` gives a fixed stratified split as tensors scaled to [0, 1].
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

from uabnn_convert.zoo._build import build
from uabnn_convert.zoo.layers import BinaryUnit

__all__ = ["BiRealDigits", "digits_data"]

_DIGITS_CFG = {"input_size": (1, 8, 8), "mean": (0.0,), "std": (1.0,)}


class BiRealDigits(nn.Module):
    """Real 3x3 stem (1 -> width), ``depth`` Bi-Real binary units, real-valued classifier.

    The feature map is pooled to 2x2 rather than 1x1 before the classifier: an 8x8 digit
    loses too much to a global average, and the real-valued head stays tiny (4 * width * 10).
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, width: int = 32, depth: int = 3
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(*(BinaryUnit("bireal", width, width) for _ in range(depth)))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.num_features = 4 * width
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))

    def get_classifier(self) -> nn.Module:
        """The real-valued last layer (timm's convention)."""
        return self.fc


@register_model
def bireal_digits(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Bi-Real BNN for 1x8x8 digits (3 binary units of 32 channels, 29,482 parameters)."""
    return build("bireal_digits", pretrained, kwargs, BiRealDigits, _DIGITS_CFG)


def digits_data(
    test_size: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``.

    Images are ``float32`` of shape ``(N, 1, 8, 8)`` scaled to [0, 1] (pixel / 16); labels are
    ``int64``. The split is stratified and fixed by ``seed`` so that runs are comparable.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.from_numpy(data.images).float().div_(16.0).unsqueeze(1)
    y = torch.from_numpy(data.target).long()
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_size, random_state=seed, stratify=y.numpy()
    )
    idx_train_t = torch.from_numpy(idx_train)
    idx_test_t = torch.from_numpy(idx_test)
    return x[idx_train_t], y[idx_train_t], x[idx_test_t], y[idx_test_t]
