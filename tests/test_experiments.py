"""The experiment scripts with tiny settings: result files, printed tables, the shared start of
sign and c-sign runs, and the CIFAR route (WRN-22 via the cifar recipes) on fake CIFAR files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from experiments import fig5, sweep

# Digits at batch 128: 10 steps per epoch.
QUICK = ["--epochs", "1", "--set", "data.batch_size=128"]


def invoke(app, args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_fig5_digits(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    out = invoke(
        fig5.app, ["--seeds", "2", *QUICK, "--results", str(tmp_path / "res"), "--runs", str(runs)]
    )
    assert "Fig. 5 — flip rate per epoch" in out and "Fig. 5 — end of training" in out
    assert "paired over 2 seeds" in out
    res = tmp_path / "res"
    assert {p.name for p in res.iterdir()} == {
        "fig5_digits.json",
        "fig5_digits.md",
        "fig5_digits.png",
    }
    data = json.loads((res / "fig5_digits.json").read_text())
    assert data["config"]["seeds"] == [0, 1]
    assert len(data["per_seed"]) == 2 and len(data["per_epoch"]) == 1
    for entry in data["per_seed"]:
        seed = entry["seed"]
        recipes = {
            kind: yaml.safe_load((runs / f"{kind}-seed{seed}" / "recipe.yaml").read_text())
            for kind in ("sign", "csign")
        }
        # Same initial model file and seed; only the binarizer differs.
        assert recipes["sign"]["model"]["init"] == recipes["csign"]["model"]["init"]
        assert recipes["sign"]["model"]["init"].endswith(f"init-seed{seed}.pt")
        assert recipes["sign"]["seed"] == recipes["csign"]["seed"] == seed
        assert recipes["sign"]["csign"]["enabled"] is False
        assert recipes["csign"]["csign"]["enabled"] is True
        assert entry["sign"]["summary"]["vetoed"] == 0
        assert entry["c-sign"]["summary"]["vetoed"] > 0
    accs = data["final"]["c-sign"]["test_top1_per_seed"]
    assert data["final"]["c-sign"]["test_top1"]["mean"] == pytest.approx(sum(accs) / 2)
    md = (res / "fig5_digits.md").read_text()
    assert "| epoch | sign flip rate |" in md and "| run | test acc (%) |" in md
    assert f"{data['final']['sign']['test_top1']['mean']:.2f} ± " in md


def test_sweep_digits(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["--m", "1,3", "--delta", "0.5", "--seeds", "1", *QUICK]
    out = invoke(sweep.app, [*args, "--results", str(tmp_path), "--runs", str(runs)])
    assert "m × delta sweep" in out
    assert "bit-identical runs" in out or "no two settings gave bit-identical runs" in out
    for label in ("sign", "m=1 delta=0.5", "m=3 delta=0.5"):
        assert label in out
    data = json.loads((tmp_path / "sweep_digits.json").read_text())
    settings = {s["setting"]: s for s in data["settings"]}
    assert list(settings) == ["sign", "m=1 delta=0.5", "m=3 delta=0.5"]
    assert settings["sign"]["csign"] is None
    assert settings["m=3 delta=0.5"]["csign"] == {"m": 3, "delta": 0.5}
    assert settings["m=1 delta=0.5"]["test_top1_minus_sign"] is not None
    # The settings reach the harness: each run's resolved recipe says what was asked.
    recipe = yaml.safe_load((runs / "m3_delta0.5-seed0" / "recipe.yaml").read_text())
    assert recipe["csign"]["m"] == 3 and recipe["csign"]["delta"] == 0.5
    assert recipe["model"]["init"].endswith("init-seed0.pt")
    md = (tmp_path / "sweep_digits.md").read_text()
    assert "| setting | m | delta |" in md and "m \\ delta" in md


def test_sweep_rejects_bad_lists(tmp_path: Path) -> None:
    result = CliRunner().invoke(sweep.app, ["--m", "two", "--results", str(tmp_path)])
    assert result.exit_code == 2 and "--m 'two'" in result.output
    result = CliRunner().invoke(
        sweep.app, ["--delta", "1.5", "--seeds", "1", *QUICK, "--results", str(tmp_path)]
    )
    assert result.exit_code == 2 and "delta" in result.output
    assert not (tmp_path / "sweep_digits.json").exists()


def write_fake_cifar10(root: Path, per_batch: int = 8) -> None:
    """CIFAR-10's python version as torchvision reads it, with random pixels."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int) -> dict:
        return {
            "batch_label": "fake",
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
            "filenames": [f"img{i}.png" for i in range(n)],
        }

    files = {f"data_batch_{i}": batch(per_batch) for i in range(1, 6)}
    files["test_batch"] = batch(per_batch)
    files["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
    for name, obj in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)


def test_fig5_cifar_route_runs_wrn22(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_fake_cifar10(data)
    args = [
        "--data",
        "cifar10",
        "--data-dir",
        str(data),
        "--seeds",
        "1",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--set",
        "data.num_workers=0",
        "--results",
        str(tmp_path / "res"),
        "--runs",
        str(tmp_path / "runs"),
    ]
    out = invoke(fig5.app, args)
    assert "cifar10_wrn22_16" in out
    recipe = yaml.safe_load((tmp_path / "runs" / "csign-seed0" / "recipe.yaml").read_text())
    assert recipe["model"]["arch"] == "wrn22_16"
    assert recipe["data"]["dataset"] == "cifar10"
    saved = json.loads((tmp_path / "res" / "fig5_cifar10_wrn22_16.json").read_text())
    assert saved["per_seed"][0]["c-sign"]["summary"]["updates"] == 2


def test_fig5_cifar_without_data_is_one_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        fig5.app,
        ["--data", "cifar100", "--data-dir", str(tmp_path), "--results", str(tmp_path / "r")],
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cifar" in errors[0].lower()
    assert "Traceback" not in result.output
    result = CliRunner().invoke(fig5.app, ["--data", "mnist"])
    assert result.exit_code == 2 and "digits, cifar10, cifar100" in result.output
