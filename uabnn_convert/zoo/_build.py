"""Small helpers shared by the zoo's timm entry points."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_TIMM_BOOKKEEPING = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def build(
    name: str,
    pretrained: bool,
    kwargs: dict[str, Any],
    ctor: Callable[..., nn.Module],
    data_cfg: dict[str, Any],
) -> nn.Module:
    """Build a zoo model for a timm entry point.

    Refuses ``pretrained=True`` (the zoo ships no weights and must never download), drops the
    bookkeeping keywords ``timm.create_model`` always passes, and attaches a ``pretrained_cfg``
    so that ``timm.data.resolve_data_config(model=...)`` knows the expected input.
    """
    if pretrained:
        raise ValueError(
            f"{name}: the uabnn_convert zoo has no pretrained weights; create it with "
            "pretrained=False and train it, or load your own checkpoint with load_state_dict"
        )
    for key in _TIMM_BOOKKEEPING:
        kwargs.pop(key, None)
    model = ctor(**kwargs)
    num_classes = getattr(model, "num_classes", None)
    cfg = {
        "architecture": name,
        "num_classes": num_classes,
        "interpolation": "bilinear",
        "crop_pct": 0.875 if data_cfg["input_size"][-1] >= 224 else 1.0,
        "first_conv": "conv1",
        "classifier": "fc",
        **data_cfg,
    }
    in_chans = getattr(model, "in_chans", None)
    if in_chans is not None and in_chans != cfg["input_size"][0]:
        # other channel counts get the channel-averaged normalisation of the default input
        cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
        for key in ("mean", "std"):
            cfg[key] = (sum(cfg[key]) / len(cfg[key]),) * in_chans
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model
