"""A third-party BNN whose forward does not trace as a whole — converted anyway.

    python examples/inspect_untraceable.py --steps 3

Real model code often cannot go through ``torch.fx.symbolic_trace(model)``: a shape assert on
the input, a branch on the data (here: skip the refinement block when the batch is already
confident), ``print`` debugging, ``len()`` of a proxy. ``uabnn_convert`` never traces the
whole model: it traces each module's *own* forward, with children left as calls. So the binary
convolutions below (a Bi-Real-style weight sign with a clipped straight-through estimator,
written out by hand as in many repositories) are found and converted while the top-level
forward stays untouched, data-dependent branch and all.
"""

from __future__ import annotations

import argparse

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import uabnn_convert as uc


class SignSTE(torch.autograd.Function):
    """Activation binarizer with a clipped straight-through gradient (left alone: not a weight)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class HardBinaryConv(nn.Conv2d):
    """Weight binarization as Bi-Real Net's code writes it: scaled sign, clipped STE."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        scale = w.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
        binary = scale * torch.sign(w)
        clipped = torch.clamp(w, -1.0, 1.0)
        w_eff = binary.detach() - clipped.detach() + clipped
        return F.conv2d(SignSTE.apply(x), w_eff, None, self.stride, self.padding)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = HardBinaryConv(width, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(x))


class ThirdPartyBNN(nn.Module):
    """The kind of top-level forward fx cannot trace: an input assert and a data branch."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width))
        self.body = nn.Sequential(Block(width), Block(width))
        self.refine = Block(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 4 and x.shape[1] == 1, f"expected N x 1 x H x W, got {tuple(x.shape)}"
        h = self.body(self.stem(x))
        if h.abs().mean() < 10:  # data-dependent: refine unless features are already large
            h = self.refine(h)
        return self.head(h.mean(dim=(2, 3)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ThirdPartyBNN()

    try:
        torch.fx.symbolic_trace(model)
        traced = "traced (unexpected)"
    except Exception as exc:  # fx raises TraceError, or a proxy-misuse error
        traced = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    print(f"torch.fx.symbolic_trace(model) {traced}")

    report = uc.inspect(model)  # dry run: per-module tracing finds the weight signs
    print(report)
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    model.eval()
    with torch.no_grad():
        before = model(x)

    uc.patch(model, m=2, delta=0.1)
    with torch.no_grad():
        same = torch.equal(model(x), before)  # nothing held yet: exactly the original
    print(f"patched {len(list(uc.sites(model)))} sites; outputs before training unchanged: {same}")

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(args.steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(uc.stats(model))
    try:
        model(torch.randn(2, 3, 8, 8))
    except AssertionError as exc:
        print(f"the model's own assert still runs: {exc}")
    if len(report) != 3 or not same:
        raise SystemExit("expected 3 weight-sign sites and unchanged outputs")


if __name__ == "__main__":
    main()
