"""Convert a timm-created BNN, train it a little, and save / load it two ways.

    python examples/convert_timm_model.py                       # IR-Net ResNet-20 (CIFAR size)
    python examples/convert_timm_model.py --arch bireal_digits --steps 3

Importing ``uabnn_convert.zoo`` registers its BNNs with timm, so ``timm.create_model`` builds
them like any timm model; your own timm-registered BNN works the same way. After ``uc.patch``:

* ``torch.save(model.state_dict())`` carries the weights *and* the c-sign state; loading it into
  the same architecture patched with the same settings restores the state exactly, so the
  restored model computes the same outputs and takes the same next update;
* ``uabnn_convert.save`` writes the file ``uabnn-convert`` writes: it records the
  architecture and the settings, so ``uc.load(path)`` rebuilds the model alone
  (and ``uabnn-convert inspect FILE`` shows it).

The training data are random tensors: the point is the state, not the accuracy.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import uabnn_convert as uc
import uabnn_convert.zoo  # registers the zoo's BNNs with timm

SETTINGS = {"m": 2, "delta": 0.1}


def train_steps(model: torch.nn.Module, steps: int, batch: int, seed: int) -> None:
    """A few SGD steps on random inputs of the model's own input size (c-sign advances)."""
    g = torch.Generator().manual_seed(seed)
    shape = model.pretrained_cfg["input_size"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(batch, *shape, generator=g)
        y = torch.randint(0, model.num_classes, (batch,), generator=g)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Every tensor of the two state_dicts (weights and c-sign buffers) is equal."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="irnet_resnet20", help="a timm / zoo model name")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="training steps before saving")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="directory for the files")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    model = timm.create_model(args.arch, num_classes=args.num_classes)
    print(uc.inspect(model))  # dry run: the weight-sign sites patch would convert
    uc.patch(model, **SETTINGS)
    train_steps(model, args.steps, args.batch, seed=1)
    total = uc.stats(model, uncertainty=True).total
    print(
        f"after {total['updates']} updates: {total['flips']} flips and {total['vetoed']} vetoed "
        f"flips at the last update, sum of f-hat {total['uncertainty']:.1f}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        x = torch.randn(4, *model.pretrained_cfg["input_size"])
        model.eval()
        with torch.no_grad():
            expected = model(x)

        # 1. A plain state_dict, into the same architecture patched with the same settings.
        torch.save(model.state_dict(), out / "model.csign.pt")
        restored = uc.patch(timm.create_model(args.arch, num_classes=args.num_classes), **SETTINGS)
        restored.load_state_dict(torch.load(out / "model.csign.pt", weights_only=True))
        restored.eval()
        with torch.no_grad():
            outputs_equal = torch.equal(restored(x), expected)
        print(
            f"state_dict round trip: state equal {same_state(model, restored)}, "
            f"eval outputs equal {outputs_equal}"
        )

        # The restored state continues exactly: one more identical step on both.
        a, b = copy.deepcopy(model), restored
        train_steps(a, 1, args.batch, seed=3)
        train_steps(b, 1, args.batch, seed=3)
        print(f"next update identical after restore: {same_state(a, b)}")

        # 2. The command line's file format: records architecture and settings.
        path = uc.save(
            model,
            out / "model.uabnn.pt",
            arch=args.arch,
            arch_kwargs={"num_classes": args.num_classes},
        )
        loaded = uc.load(path).eval()
        with torch.no_grad():
            loaded_equal = torch.equal(loaded(x), expected)
        print(
            f"{path.name}: uc.load rebuilt {type(loaded).__name__}, "
            f"state equal {same_state(model, loaded)}, eval outputs equal {loaded_equal}"
        )
        if args.out is not None:
            print(f"see it from the shell: uabnn-convert inspect {path}")
        if not (outputs_equal and loaded_equal and same_state(a, b)):
            raise SystemExit("round trip changed the model")


if __name__ == "__main__":
    main()
