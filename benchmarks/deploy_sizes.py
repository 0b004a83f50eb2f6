"""Deployment sizes of the zoo: float checkpoint vs bit-packed file (``uc.export``).

    python -m benchmarks.deploy_sizes [--model NAME ...] [--steps N] [--json out.json]

For each zoo model (default arguments, e.g. 1000 classes for the ImageNet ResNets): the size
of ``torch.save(model.state_dict())`` of the unconverted float model, the size of the packed
safetensors file written by :func:`uabnn_convert.deploy.export_packed` after patching with
``delta=0.1`` and ``N`` SGD steps on random data (0: one training-mode forward, so that every
site holds its state), their ratio, the number of straight-through rounding exceptions the
packed file had to store, and whether :func:`~uabnn_convert.deploy.load_packed`'s model
reproduces ``uc.freeze``'s outputs bit for bit.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import typer
from rich.console import Console

import uabnn_convert as uc
from uabnn_convert.deploy import export_packed, load_packed, packed_report
from uabnn_convert.report import Report
from uabnn_convert.zoo import MODELS

app = typer.Typer(add_completion=False)

# Spatial size used for the training-mode forward/steps (the ImageNet stems reach 1x1 at 32).
_SPATIAL = {"bireal_digits": 8}


def measure(name: str, steps: int = 0, verify: bool = True, seed: int = 0) -> dict:
    """One row of the size table for zoo model ``name``."""
    torch.manual_seed(seed)
    model = timm.create_model(name)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    float_bytes = buffer.getbuffer().nbytes
    uc.patch(model, delta=0.1)
    channels = model.pretrained_cfg["input_size"][0]
    side = _SPATIAL.get(name, 32)
    g = torch.Generator().manual_seed(seed + 1)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(max(steps, 0)):
        x = torch.randn(8, channels, side, side, generator=g)
        y = torch.randint(0, model.num_classes, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model(torch.randn(2, channels, side, side, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_packed(model, Path(tmp) / f"{name}.safetensors", arch=name)
        packed_bytes = path.stat().st_size
        report = packed_report(path)
        exact = None
        if verify:
            x = torch.randn(2, channels, side, side, generator=g)
            with torch.no_grad():
                expected = uc.freeze(model)(x)
                got = load_packed(path)(x)
            exact = torch.equal(expected.view(torch.int32), got.view(torch.int32))
    binary = sum(r["elements"] for r in report.rows if r["encoding"] == "signbits")
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "binary_weights": binary,
        "float_bytes": float_bytes,
        "packed_bytes": packed_bytes,
        "ratio": float_bytes / packed_bytes,
        "exceptions": report.total["exceptions"],
        "bit_exact": "-" if exact is None else ("yes" if exact else "NO"),
    }


def table(names: list[str], steps: int = 0, verify: bool = True) -> Report:
    """The size table as a :class:`Report` (one row per model)."""
    rows = [measure(name, steps, verify) for name in names]
    columns = list(rows[0])
    notes = [
        "float: torch.save(state_dict) of the unconverted model; packed: uc.export's "
        f"safetensors file after patch(delta=0.1) and {steps} SGD step(s) on random data",
        "exceptions: effective-weight elements whose straight-through rounding differs from "
        "sign×scale by a few ulp, stored exactly beside the bits",
    ]
    return Report("deployment size of the zoo models", columns, rows, notes=notes)


@app.command()
def main(
    model: list[str] = typer.Option(None, "--model", help="Zoo model(s); default: all."),
    steps: int = typer.Option(0, min=0, help="SGD steps on random data before export."),
    verify: bool = typer.Option(True, help="Check load_packed's outputs against uc.freeze."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the rows as JSON."),
) -> None:
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    report = table(list(model or MODELS), steps, verify)
    Console(width=160).print(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2))


if __name__ == "__main__":
    app()
