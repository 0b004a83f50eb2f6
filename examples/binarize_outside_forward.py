"""c-sign for weights binarized outside forward, by the training loop (XNOR-Net's ``BinOp``).

    python examples/binarize_outside_forward.py --epochs 3

XNOR-Net's reference code keeps real-valued convolutions and, around every step, writes
``p.data = sign(p.data) * alpha`` before the forward and restores the latent after the
backward. There is no sign in any forward for ``uc.patch`` to convert (it says so and points
here); the manual API is one line per weight instead::

    binarize = uc.CSign(p.shape, m=2, delta=0.1)      # once, per binarized weight
    p.data = binarize(latent) * alpha                 # where the loop wrote sign(latent) * alpha

A :class:`uabnn_convert.CSign` in training mode advances once per change of the latent it is
given, keeps its state in buffers, and returns the held sign where a flip is vetoed. Kept in
an ``nn.ModuleDict`` on the model, its state goes into ``model.state_dict()`` with the weights,
so a checkpoint restores training exactly. The script trains a small XNOR-style BNN on
scikit-learn's digits both ways (sign, c-sign) from the same start and prints flips per epoch,
then checks that a state_dict round trip resumes bit for bit.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

import uabnn_convert as uc
from uabnn_convert.zoo import digits_data


class SmallNet(nn.Module):
    """Real-valued layers; the loop binarizes ``binarized()`` weights around each step."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def binarized(self) -> dict[str, nn.Parameter]:
        return {"conv1": self.conv1.weight, "conv2": self.conv2.weight}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = x + F.hardtanh(self.bn1(self.conv1(x)))
        x = x + F.hardtanh(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class BinOp:
    """The training loop's binarizer: ``csign=False`` is XNOR-Net's own (plain sign)."""

    def __init__(self, model: SmallNet, csign: bool, m: int = 2, delta: float = 0.1) -> None:
        self.model = model
        self.weights = model.binarized()
        self.saved = {name: p.detach().clone() for name, p in self.weights.items()}
        if csign and not hasattr(model, "binarizers"):
            # On the model, so that model.state_dict() carries the c-sign state.
            model.binarizers = nn.ModuleDict(
                {name: uc.CSign(p.shape, m=m, delta=delta) for name, p in self.weights.items()}
            )
        self.flips = 0

    def binarize(self) -> None:
        for name, p in self.weights.items():
            latent = p.data
            self.saved[name].copy_(latent)
            alpha = latent.abs().mean(dim=(1, 2, 3), keepdim=True)
            if hasattr(self.model, "binarizers"):
                binary = self.model.binarizers[name](latent)  # the one changed line
            else:
                binary = latent.sign()
            p.data = binary * alpha

    def restore(self) -> None:
        for name, p in self.weights.items():
            p.data = self.saved[name].clone()


def train(model: SmallNet, csign: bool, epochs: int, data, seed: int) -> list[float]:
    """Train with the binarize/restore loop; binary-weight flips per weight in each epoch."""
    x_train, y_train = data
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    bin_op = BinOp(model, csign)
    generator = torch.Generator().manual_seed(seed)
    numel = sum(p.numel() for p in bin_op.weights.values())
    rates = []
    for _ in range(epochs):
        before = {n: p.detach().sign() for n, p in bin_op.weights.items()}
        flips = 0
        for idx in torch.randperm(len(x_train), generator=generator).split(64):
            bin_op.binarize()
            now = {n: p.detach().sign() for n, p in bin_op.weights.items()}
            flips += sum(int((now[n] != before[n]).sum()) for n in now)
            before = now
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            bin_op.restore()
            optimizer.step()
        rates.append(flips / numel)
    return rates


def accuracy(model: SmallNet, csign: bool, x: torch.Tensor, y: torch.Tensor) -> float:
    bin_op = BinOp(model, csign)
    model.eval()
    if csign:
        model.binarizers.eval()  # eval mode reads the held state and never advances
    bin_op.binarize()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).float().mean().item()
    bin_op.restore()
    model.train()
    return 100 * correct


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = digits_data()

    torch.manual_seed(args.seed)
    start = SmallNet()
    results = {}
    for csign in (False, True):
        model = copy.deepcopy(start)
        rates = train(model, csign, args.epochs, (x_train, y_train), args.seed)
        results[csign] = (rates, accuracy(model, csign, x_test, y_test))
    for csign, (rates, acc) in results.items():
        name = "c-sign" if csign else "sign  "
        shown = " ".join(f"{r:.2e}" for r in rates)
        print(f"{name}: flips per weight in each epoch {shown}; test accuracy {acc:.1f} %")

    # The c-sign state is in the model's state_dict: a restored copy continues bit for bit.
    model = copy.deepcopy(start)
    train(model, True, 1, (x_train, y_train), args.seed)
    restored = SmallNet()
    BinOp(restored, csign=True)  # creates the binarizers, as the training script would
    restored.load_state_dict(copy.deepcopy(model.state_dict()))
    runs = [train(m, True, 1, (x_train, y_train), args.seed + 1) for m in (model, restored)]
    states = (model.state_dict(), restored.state_dict())
    same = all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    print(f"state_dict round trip resumes identically: {same and runs[0] == runs[1]}")


if __name__ == "__main__":
    main()
