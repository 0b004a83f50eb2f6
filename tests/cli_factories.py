"""Model factories for the command-line tests, referenced as ``--arch cli_factories:NAME``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SignLinear(nn.Linear):
    """A linear layer whose weight goes through ``torch.sign`` (the plainest weight-sign BNN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, torch.sign(self.weight), self.bias)


def tiny_bnn(width: int = 8, num_classes: int = 3) -> nn.Module:
    """Two sign-binarized linear layers: two c-sign sites."""
    return nn.Sequential(SignLinear(4, width), nn.Hardtanh(), SignLinear(width, num_classes))


def digits_bnn(width: int = 16) -> nn.Module:
    """A sign-binarized MLP for scikit-learn's 8x8 digits (a user's model the zoo lacks)."""
    return nn.Sequential(nn.Flatten(), SignLinear(64, width), nn.Hardtanh(), SignLinear(width, 10))


def plain_mlp(width: int = 8) -> nn.Module:
    """A real-valued model: no weight-sign site to convert."""
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))


def broken(**kwargs: object) -> nn.Module:
    """A factory that fails, as a user's factory with a bug would."""
    raise RuntimeError("factory exploded on purpose")


def not_a_model() -> dict[str, int]:
    """A factory that returns something that is not a module."""
    return {"width": 8}
