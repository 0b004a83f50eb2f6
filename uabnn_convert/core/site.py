"""A converted weight-sign op: the original op, with its sign value supplied by c-sign.

A site keeps the *original* callable. A plain ``torch.sign`` / ``Tensor.sign`` is answered by
c-sign directly (with sign's own zero gradient). A custom ``autograd.Function`` is still called
as itself, so its forward arithmetic and its custom backward (EDE, clipped STE) are untouched;
only the one ``sign`` inside its forward is answered by c-sign, through a torch-function mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .csign import CSign

SIGN_FUNCS = (torch.sign, torch.Tensor.sign)


class _SignSwap(TorchFunctionMode):
    """Answer the first ``sign`` call made inside an op with a c-sign site."""

    def __init__(self, site: CSign) -> None:
        super().__init__()
        self.site = site
        self.used = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.used and func in SIGN_FUNCS:
            self.used = True
            return CSign.forward(self.site, args[0])
        return func(*args, **kwargs)


class CSignSite(CSign):
    """One site: c-sign state plus the original op it stands in for.

    ``op`` is ``torch.sign`` for a plain sign, the Function's apply for a custom Function, and
    None for a binarizing child module, which the owner's graph passes as the first argument
    (so the module stays where it is, registered once, under its own name).
    """

    def __init__(
        self,
        op: Callable[..., Tensor] | None,
        shape: torch.Size,
        *,
        family: str = "generic",
        op_label: str = "torch.sign",
        pattern: str = "",
        **settings: Any,
    ) -> None:
        super().__init__(shape, **settings)
        self.op = op
        self.family = family
        self.op_label = op_label
        self.pattern = pattern

    def extra_repr(self) -> str:
        return f"{self.op_label}, family={self.family}, " + super().extra_repr()

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.op is torch.sign:
            return super().forward(args[0])
        op = self.op
        if op is None:  # a binarizing child module, passed in by the owner's graph
            op, *args = args
        with _SignSwap(self):
            return op(*args, **kwargs)

    @torch.no_grad()
    def frozen_value(self, *args: Any, **kwargs: Any) -> Tensor:
        """What the site returns in eval mode for these inputs: the held binary state."""
        was = self.training
        self.eval()
        try:
            return self.forward(*args, **kwargs).detach().clone()
        finally:
            self.train(was)
