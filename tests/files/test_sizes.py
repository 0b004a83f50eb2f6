"""File sizes on a real-size model (Bi-Real ResNet-18, 11.7 M weights, ~47 MB as float32).

A converted file before any update is its input plus a small record: the c-sign window is
stored only once it holds data. The frozen file holds the deployable model only: no larger
than the original checkpoint. Both restore exactly, and ``freeze`` and ``freeze --packed``
agree on a site that holds no state yet (its binary weight is the sign of the latent).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

import uabnn_convert as uc
import uabnn_convert.zoo  # registers bireal_resnet18 with timm
from uabnn_convert.cli import app

RECORD_BYTES = 64 * 1024  # a generous bound on what the record adds to the tensors


def _cli(*args: object) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sizes")
    torch.manual_seed(0)
    model = timm.create_model("bireal_resnet18", num_classes=10).eval()
    torch.save(model.state_dict(), d / "model.pt")
    _cli(d / "model.pt", "--arch", "bireal_resnet18", "--arch-kwarg", "num_classes=10")
    _cli("freeze", d / "model.uabnn.pt")
    _cli("freeze", d / "model.uabnn.pt", "--packed")
    files = {p.name: p for p in d.iterdir()}
    files["x"] = d / "x.pt"
    torch.save(torch.randn(2, 3, 64, 64), files["x"])
    return files


def test_a_converted_file_at_zero_updates_is_the_size_of_its_input(resnet) -> None:
    original = resnet["model.pt"].stat().st_size
    assert original > 40e6
    assert resnet["model.uabnn.pt"].stat().st_size <= original + RECORD_BYTES


def test_the_frozen_file_is_no_larger_than_the_original(resnet) -> None:
    original = resnet["model.pt"].stat().st_size
    assert resnet["model.frozen.pt"].stat().st_size <= original + RECORD_BYTES
    # ... and the packed file stores the binary weights at one bit each.
    assert resnet["model.packed.safetensors"].stat().st_size < 0.2 * original


def test_every_file_restores_the_original_outputs(resnet) -> None:
    x = torch.load(resnet["x"])
    torch.manual_seed(0)
    original = timm.create_model("bireal_resnet18", num_classes=10).eval()
    original.load_state_dict(torch.load(resnet["model.pt"]))
    with torch.no_grad():
        expected = original(x)
        converted = uc.load(resnet["model.uabnn.pt"]).eval()(x)
        frozen = uc.load(resnet["model.frozen.pt"]).eval()(x)
        packed = uc.load_packed(resnet["model.packed.safetensors"]).eval()(x)
    torch.testing.assert_close(converted, expected, rtol=0, atol=0)
    torch.testing.assert_close(frozen, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed, frozen, rtol=0, atol=0)
    # The converted file records no window for a fresh site, and loads as a fresh site.
    state = torch.load(resnet["model.uabnn.pt"], weights_only=True)["state_dict"]
    assert not [k for k in state if k.endswith((".window", ".held"))]
    assert all(int(s.num_updates) == 0 for _, s in uc.sites(uc.load(resnet["model.uabnn.pt"])))
