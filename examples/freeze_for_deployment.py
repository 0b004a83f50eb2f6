"""Freeze a trained c-sign model for deployment and check that nothing changed.

    python examples/freeze_for_deployment.py --epochs 2

A converted model carries training machinery: per weight, a window of past latent values and
the held binary state. ``uc.freeze`` returns a copy where every c-sign site is replaced by the
binary state it holds, as a constant: same eval outputs, no c-sign code, and it traces with
``torch.fx``. ``uc.export`` goes one step further and writes the binary weights at 1 bit each
(a safetensors file, no pickle) that ``uc.load_packed`` turns back into the same eval model.
The shell equivalent is ``uabnn-convert freeze model.uabnn.pt``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch
import torch.fx
import torch.nn.functional as F

import uabnn_convert as uc
from uabnn_convert.zoo import digits_data  # importing the zoo registers its timm models

ARCH = "bireal_digits"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="directory for the packed file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = digits_data()

    model = uc.patch(timm.create_model(ARCH, num_classes=10), m=2, delta=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for i in range(0, len(order) - 63, 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    total = uc.stats(model).total
    print(f"trained {total['updates']} updates; last update vetoed {total['vetoed']} flips")

    model.eval()
    frozen = uc.freeze(model)  # a copy, in eval mode; the converted model is untouched
    with torch.no_grad():
        expected = model(x_test)
        frozen_out = frozen(x_test)
    left = [name for name, _ in uc.sites(frozen)]
    accuracy = (frozen_out.argmax(1) == y_test).float().mean().item()
    print(
        f"frozen: {len(left)} c-sign sites left, test accuracy {100 * accuracy:.2f}%, "
        f"eval outputs identical: {torch.equal(frozen_out, expected)}"
    )

    traced = torch.fx.symbolic_trace(frozen)  # plain constants: the whole model traces
    with torch.no_grad():
        traced_same = torch.equal(traced(x_test), expected)
    print(f"torch.fx.symbolic_trace(frozen) works; its outputs identical: {traced_same}")

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        packed = uc.export(model, out / "digits.packed.safetensors", arch=ARCH)
        deployed = uc.load_packed(packed)
        with torch.no_grad():
            packed_same = torch.equal(deployed(x_test), expected)
        float_bytes = sum(t.numel() * t.element_size() for t in frozen.state_dict().values())
        print(
            f"{packed.name}: {packed.stat().st_size:,} bytes (frozen state_dict "
            f"{float_bytes:,} bytes); uc.load_packed outputs identical: {packed_same}"
        )
    if not (torch.equal(frozen_out, expected) and traced_same and packed_same and not left):
        raise SystemExit("freezing changed the model")


if __name__ == "__main__":
    main()
