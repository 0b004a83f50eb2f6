"""A converted model in an ordinary PyTorch training loop: no harness, no recipe.

    python examples/train_loop.py --epochs 5

Builds the zoo's tiny Bi-Real BNN for scikit-learn's 8x8 digits, turns its weight signs into
c-signs with one call, trains it with a plain Adam loop, reports the c-sign statistics each
epoch, and freezes a deployable copy at the end. c-sign advances by itself once per optimizer
step in training mode; the loop needs nothing else. Runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F

import uabnn_convert as uc
from uabnn_convert.zoo import digits_data  # importing the zoo registers its timm models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # a 28k-parameter model is fastest on one thread
    x_train, y_train, x_test, y_test = digits_data()

    model = timm.create_model("bireal_digits", num_classes=10)
    uc.patch(model, m=2, delta=0.1)  # every weight sign becomes a stateful c-sign
    print(uc.inspect(model))

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(y_train))
        total, batches = 0.0, 0
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1

        model.eval()  # eval mode reads the held binary state; nothing advances
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        s = uc.stats(model, uncertainty=True).total
        print(
            f"epoch {epoch}: loss {total / batches:.3f}, test accuracy {100 * accuracy:.1f}%, "
            f"updates {s['updates']}, last update: flip rate {s['flip_rate']:.2e}, "
            f"vetoed {s['vetoed']}, sum of f-hat {s['uncertainty']:.1f}"
        )

    frozen = uc.freeze(model)  # plain constants instead of c-sign machinery
    with torch.no_grad():
        same = torch.equal(frozen(x_test), model(x_test))
    print(f"frozen copy gives identical eval outputs: {same}")


if __name__ == "__main__":
    main()
