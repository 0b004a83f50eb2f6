"""The binary-aware summary: parameters by precision, deployment memory, binary/float MACs.

Counts are checked against hand computations (the digits BNN), against Bi-Real Net's published
ResNet-18 figures, across model states (original, converted, frozen, packed) and families.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import uabnn_convert as uc
import uabnn_convert.zoo as zoo
from uabnn_convert.deploy import export_packed, load_packed, summary
from uabnn_convert.deploy.summary import COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore:.*should not be instantiated")


# Hand count for bireal_digits (1x8x8 input, width 32, 3 binary units, 2x2 pool, 10 classes).
DIGITS_BINARY_MACS = 3 * (8 * 8 * 32) * (32 * 3 * 3)
DIGITS_FLOAT_MACS = (8 * 8 * 32) * (1 * 3 * 3) + 128 * 10
DIGITS_1BIT = 3 * 32 * 32 * 3 * 3
DIGITS_32BIT = 32 * 9 + 4 * 32 + 3 * 4 * 32 + 128 * 10 + 10  # stem, BNs (2 params, 2 stats), fc


def _totals(report) -> dict:
    keys = ("params_1bit", "params_32bit", "memory_bytes", "macs_binary", "macs_float")
    return {k: report.total[k] for k in keys}


def test_digits_counts_match_a_hand_count() -> None:
    report = summary(timm.create_model("bireal_digits"), (1, 8, 8))
    t = report.total
    assert t["params_1bit"] == DIGITS_1BIT and t["params_32bit"] == DIGITS_32BIT
    assert t["memory_bytes"] == DIGITS_1BIT // 8 + 4 * DIGITS_32BIT
    assert t["macs_binary"] == DIGITS_BINARY_MACS and t["macs_float"] == DIGITS_FLOAT_MACS
    assert t["compression_ratio"] == pytest.approx(
        4 * (DIGITS_1BIT + DIGITS_32BIT) / t["memory_bytes"]
    )
    assert t["binary_mac_fraction"] == pytest.approx(
        DIGITS_BINARY_MACS / (DIGITS_BINARY_MACS + DIGITS_FLOAT_MACS)
    )
    rows = {r["layer"]: r for r in report.rows}
    assert report.columns == COLUMNS
    conv = rows["layer1.0.binary_conv"]
    assert conv["input_bits"] == 1 and conv["output"] == (32, 8, 8)
    assert conv["params_1bit"] == 9216 and conv["macs_float"] == 0
    assert rows["conv1"]["input_bits"] == 32 and rows["conv1"]["macs_binary"] == 0
    assert rows["layer1.0.bn"]["input_bits"] == "-" and rows["layer1.0.bn"]["macs_float"] == 0
    assert "layer1" not in rows  # a container with nothing of its own is not a layer


def test_every_model_state_gives_the_same_summary(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("bireal_digits")
    original = _totals(summary(model, (1, 8, 8)))
    uc.patch(model, delta=0.1)
    model.train()
    model(torch.randn(4, 1, 8, 8))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert _totals(summary(model, (1, 8, 8))) == original
    # the summary runs in eval mode: no c-sign update, and the mode is restored
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert _totals(summary(uc.freeze(model), (1, 8, 8))) == original
    packed = load_packed(export_packed(model, tmp_path / "m.st", arch="bireal_digits"))
    assert _totals(summary(packed, (1, 8, 8))) == original


def test_bireal_resnet18_matches_the_published_figures() -> None:
    """Bi-Real Net (Liu et al. 2018), ResNet-18: 1.68e9 binary operations; this layout has
    10,985,472 binary weights (16 binary 3x3 convs) and an ImageNet head."""
    model = timm.create_model("bireal_resnet18")
    t = summary(model, (3, 224, 224)).total
    assert t["params_1bit"] == sum(p.numel() for _, p in zoo.binary_latents(model)) == 10_985_472
    assert t["macs_binary"] == 1_676_279_808
    assert t["binary_mac_fraction"] == pytest.approx(0.924, abs=1e-3)
    assert t["compression_ratio"] > 10


@pytest.mark.parametrize("family", sorted(zoo.FAMILIES))
def test_every_family_has_binary_convs(family: str) -> None:
    size = (3, 16, 16)
    bireal = summary(zoo.binary_wrn22([8, 8, 16, 16], family="bireal"), size).total
    model = zoo.binary_wrn22([8, 8, 16, 16], family=family)
    report = summary(model, size)
    binary_convs = [r for r in report.rows if r["layer"].endswith("binary_conv")]
    assert len(binary_convs) == 18
    assert all(r["input_bits"] == 1 and r["macs_float"] == 0 for r in binary_convs)
    assert report.total["macs_binary"] == bireal["macs_binary"]
    assert report.total["params_1bit"] == bireal["params_1bit"]


def test_binary_linear_layers_count_through_matmul() -> None:
    model = nn.Sequential(
        nn.Flatten(), zoo.BinaryActivation(), zoo.BinaryLinear(12, 6), zoo.BinaryLinear(6, 3)
    )
    rows = {r["layer"]: r for r in summary(model, (3, 4)).rows}
    assert rows["2"]["macs_binary"] == 12 * 6 and rows["2"]["params_1bit"] == 72
    assert rows["2"]["params_32bit"] == 6  # the bias
    # the second layer's input is not binarized: a float MAC whatever its weights
    assert rows["3"]["macs_float"] == 6 * 3 and rows["3"]["input_bits"] == 32


def test_float_model_has_nothing_binary() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    t = summary(model, (3, 8, 8)).total
    assert t["params_1bit"] == 0 and t["macs_binary"] == 0
    assert t["macs_float"] == 4 * 6 * 6 * 27 + 144 * 2
    assert t["compression_ratio"] == 1.0 and t["binary_mac_fraction"] == 0.0


def test_report_renders_and_serialises() -> None:
    report = summary(timm.create_model("bireal_digits"), (1, 8, 8))
    text = str(report)
    assert "binary-aware summary of BiRealDigits" in text
    assert "ratio of MACs that are binarized" in text and "compression ratio" in text
    json.dumps(report.to_dict())


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        summary("model", (1, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="without the batch dim"):
        summary(timm.create_model("bireal_digits"), (0, 8))
