"""Fashion-MNIST (issue 15): the two zoo models, the four recipes, and the experiment script's
``--quick`` modes, on the IDX files of Debian's ``dataset-fashion-mnist`` package.

Tests that read the data skip (with the reason) where the package is not installed. Training
runs use a tiny copy of those files (64 training / 200 test images) so that evaluation does not
cost the 10,000-image test set; the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from typer.testing import CliRunner

import uabnn_convert as uc
import uabnn_convert.zoo.fashion  # registers the two models with timm
from experiments import fashion_mnist as fm
from uabnn_convert.train import DataError, finetune, load_recipe
from uabnn_convert.train.data import FASHION_MNIST_FILES, FASHION_MNIST_ROOT, build_data

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
HAVE_DATA = all(
    (FASHION_MNIST_ROOT / name).is_file() for pair in FASHION_MNIST_FILES.values() for name in pair
)
needs_data = pytest.mark.skipif(
    not HAVE_DATA,
    reason=f"Fashion-MNIST IDX files not under {FASHION_MNIST_ROOT} "
    "(apt-get install dataset-fashion-mnist)",
)
APT = "apt-get install dataset-fashion-mnist"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_DATA:
        pytest.skip(f"Fashion-MNIST IDX files not under {FASHION_MNIST_ROOT} ({APT})")
    return fm.tiny_copy(FASHION_MNIST_ROOT, tmp_path_factory.mktemp("fmnist"), 64, 200)


def invoke(app, args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.parametrize(
    ("name", "sites", "params"), [("bireal_fmnist", 4, 77_290), ("wrn22_16_fmnist", 18, 272_186)]
)
def test_models(name: str, sites: int, params: int) -> None:
    model = timm.create_model(name, num_classes=10)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (1, 28, 28)
    assert cfg["mean"] == (0.2860,) and cfg["std"] == (0.3530,)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    uc.patch(model, m=2, delta=0.1)
    assert len(list(uc.sites(model))) == sites
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)


def test_recipes_load() -> None:
    recipes = {p: load_recipe(RECIPES / f"{p}.yaml") for p in fm.MODELS.values()}
    signs = {p: load_recipe(RECIPES / f"{p}_sign.yaml") for p in fm.MODELS.values()}
    for stem, rec in recipes.items():
        sign = signs[stem]
        assert rec.data.dataset == "fashion_mnist" and rec.train.threads == 1
        assert rec.csign.enabled and (rec.csign.m, rec.csign.delta) == (2, 0.1)
        assert not sign.csign.enabled and sign.name == f"{stem}_sign"
        # The _sign twin differs only in the binarizer (and its name and description).
        a, b = rec.to_dict(), sign.to_dict()
        for d in (a, b):
            d.pop("name"), d.pop("description"), d["csign"].pop("enabled")
        assert a == b
    wrn = recipes["fashion_mnist_wrn22_16"]
    assert wrn.model.arch == "wrn22_16_fmnist"
    assert (wrn.optim.name, wrn.optim.lr, wrn.optim.momentum) == ("sgd", 0.1, 0.9)
    assert not wrn.optim.nesterov and wrn.schedule.name == "cosine"
    cifar = load_recipe("cifar10_wrn22_16")
    assert wrn.optim.weight_decay == cifar.optim.weight_decay
    assert wrn.data.augment == "cifar" and wrn.data.batch_size == cifar.data.batch_size
    assert recipes["fashion_mnist"].model.arch == "bireal_fmnist"


@needs_data
def test_recipe_reads_the_debian_files() -> None:
    rec = load_recipe(RECIPES / "fashion_mnist.yaml", {"data.train_subset": 1000})
    bundle = build_data(rec.data, None, 0)  # data.root unset: the Debian directory
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (1000, 10_000, 10)
    x, y = bundle.train[(0, 0)]
    assert x.shape == (1, 28, 28) and 0 <= int(y) < 10
    assert str(FASHION_MNIST_ROOT) in bundle.description


@pytest.mark.parametrize("stem", [*fm.MODELS.values(), *(f"{s}_sign" for s in fm.MODELS.values())])
def test_recipes_train_two_steps(stem: str, tiny: Path, tmp_path: Path) -> None:
    result = finetune(
        RECIPES / f"{stem}.yaml",
        data=tiny,
        out=tmp_path / "run",
        max_steps=2,
        batch_size=32,
        overrides={"log.plot": False},
        progress=False,
    )
    assert result.step == 2
    assert result.final["val_top1"] >= 0 and result.recipe.csign.enabled == (
        not stem.endswith("_sign")
    )
    train = [r for r in result.history if r["kind"] == "train"]
    assert train[-1]["flips"] > 0  # the second update flips weights that the first set


def test_missing_data_is_one_error(tmp_path: Path) -> None:
    for command in (["compare", "--quick"], ["sweep", "--quick"], ["compare"]):
        result = CliRunner().invoke(
            fm.app,
            [*command, "--data", str(tmp_path / "nowhere"), "--results", str(tmp_path / "r")],
        )
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert APT in lines[0]
        assert not (tmp_path / "r").exists()
    # The harness says the same when a recipe is pointed at an empty directory.
    with pytest.raises(DataError, match=APT):
        finetune(RECIPES / "fashion_mnist.yaml", data=tmp_path, out=tmp_path / "run")


@needs_data
def test_compare_quick(tmp_path: Path) -> None:
    res, runs = tmp_path / "res", tmp_path / "runs"
    out = invoke(fm.app, ["compare", "--quick", "--results", str(res), "--runs", str(runs)])
    md = (res / "fashion_mnist_compare.md").read_text()
    assert md.strip() in out  # the file is exactly what was printed
    assert md.startswith("# Sign vs c-sign") and "Command: `" in md and "Wall time: " in md
    for model in fm.MODELS:
        assert f"### End of training ({model})" in md
        assert f"### Paired per seed, c-sign − sign ({model})" in md
        assert f"### Per layer: mean flip rate over the run, mean over seeds ({model})" in md
        for key in ("scratch-short", "scratch-long", "finetune-short", "finetune-long", "layers"):
            assert (res / f"fashion_mnist_compare_{model}_{key}.png").stat().st_size > 0
    assert f"fixed subset of {fm.QUICK_TRAIN} of the 60,000" in md
    assert f"the first {fm.QUICK_TEST} test images" in md
    data = json.loads((res / "fashion_mnist_compare.json").read_text())
    bireal = data["models"]["bireal_fmnist"]
    assert len(bireal["per_seed"]) == 2 and len(data["models"]["wrn22_16_fmnist"]["per_seed"]) == 1
    paired = bireal["aggregates"]["finetune-long"]["paired"]
    assert paired["test_top1_difference"]["n"] == 2
    for entry in bireal["per_seed"]:
        seed = entry["seed"]
        base = runs / "bireal_fmnist" / f"seed{seed}"
        recipes = {
            key: yaml.safe_load((base / key / "recipe.yaml").read_text())
            for key in ("scratch-long-sign", "scratch-long-csign", "finetune-long-csign")
        }
        # Sign and c-sign of a seed: same initial model, same seed; only the binarizer differs.
        assert recipes["scratch-long-sign"]["model"]["init"] == str(base / "init.pt")
        assert recipes["scratch-long-csign"]["model"]["init"] == str(base / "init.pt")
        assert recipes["scratch-long-csign"]["seed"] == seed
        assert recipes["scratch-long-sign"]["csign"]["enabled"] is False
        # Fine-tuning starts from the converged sign run's weights, without c-sign state.
        ft = recipes["finetune-long-csign"]
        assert ft["model"]["init"] == str(base / "converged-sign.pt")
        assert ft["optim"]["lr"] == 0.01 and ft["data"]["train_subset"] == fm.QUICK_TRAIN
        start = torch.load(base / "converged-sign.pt", weights_only=True)
        assert not any("csign" in k for k in start)
        assert entry["runs"]["scratch-long"]["sign"]["summary"]["vetoed"] == 0
        sites = entry["runs"]["finetune-long"]["c-sign"]["sites"]
        assert len(sites) == 4 and all(len(curve) == 2 for curve in sites.values())


@needs_data
def test_sweep_quick(tmp_path: Path) -> None:
    res, runs = tmp_path / "res", tmp_path / "runs"
    out = invoke(fm.app, ["sweep", "--quick", "--results", str(res), "--runs", str(runs)])
    md = (res / "fashion_mnist_sweep.md").read_text()
    assert md.strip() in out
    for reading in ("certain", "uncertain"):
        assert f"#### test accuracy (%), reading `{reading}`" in md
        assert f"#### mean flip rate, reading `{reading}`" in md
    assert "Sign baseline (Δ = 1, exactly sign)" in md
    assert "Bit-identical runs" in md or "No two settings gave bit-identical runs" in md
    data = json.loads((res / "fashion_mnist_sweep.json").read_text())
    labels = [s["setting"] for s in data["settings"]]
    assert labels[0] == "sign" and len(labels) == 1 + 2 * 2 * 2
    recipe = yaml.safe_load(
        (runs / "sweep" / "seed0" / "uncertain_m2_delta0.1" / "recipe.yaml").read_text()
    )
    assert recipe["csign"]["threshold"] == "uncertain" and recipe["csign"]["m"] == 2
    assert recipe["model"]["init"].endswith("converged-sign.pt")
