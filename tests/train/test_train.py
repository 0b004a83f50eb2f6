"""The fine-tuning harness: recipes, data in real on-disk formats, metrics, outputs, AMP and
gradient accumulation. Every run here is a few steps with tiny settings."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import uabnn_convert as uc
from uabnn_convert.cli import app as cli_app
from uabnn_convert.train import DataError, RecipeError, ResumeError, finetune, load_recipe
from uabnn_convert.train.plot import plot_runs, read_history
from uabnn_convert.train.recipe import parse_assignment, recipes_dir

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(recipes_dir().glob("*.yaml"))
MAIN_RECIPES = [p for p in RECIPES if not p.stem.endswith("_sign")]
# Digits, small and quick: 1347 training images at batch 128 are 10 steps per epoch.
QUICK = {"data.batch_size": 128, "log.every_steps": 5, "log.plot": False}


def run_env() -> dict[str, str]:
    """Environment for subprocesses: one thread each."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- fake datasets
def write_cifar(root: Path, kind: str = "cifar10", per_batch: int = 16) -> Path:
    """CIFAR's python version, as torchvision reads it, with random pixels."""
    rng = np.random.default_rng(0)
    classes = 10 if kind == "cifar10" else 100

    def batch(n: int) -> dict:
        labels = rng.integers(0, classes, n).tolist()
        entry = {
            "batch_label": "fake",
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img{i}.png" for i in range(n)],
        }
        if kind == "cifar10":
            entry["labels"] = labels
        else:
            entry["fine_labels"] = labels
            entry["coarse_labels"] = [lab // 5 for lab in labels]
        return entry

    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": batch(per_batch) for i in range(1, 6)}
        files["test_batch"] = batch(per_batch)
        files["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
    else:
        folder = root / "cifar-100-python"
        files = {"train": batch(5 * per_batch), "test": batch(per_batch)}
        files["meta"] = {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        }
    folder.mkdir(parents=True)
    for name, obj in files.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return root


def write_imagefolder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """An ImageFolder tree (train/ and val/) of small JPEG and PNG images of varied sizes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                h, w = 36 + 4 * i, 44 - 2 * i
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                img.save(d / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


# ----------------------------------------------------------------------------- recipes
def test_every_recipe_validates_and_has_a_sign_baseline() -> None:
    names = {p.stem for p in RECIPES}
    assert {
        "digits",
        "cifar10_wrn22_16",
        "cifar10_wrn22_64",
        "cifar100_wrn22_16",
        "cifar100_wrn22_64",
        "imagenet_bireal_resnet18",
        "imagenet_reactnet_resnet18",
    } <= names
    for path in MAIN_RECIPES:
        main = load_recipe(path)
        sign = load_recipe(path.with_name(f"{path.stem}_sign.yaml"))
        assert main.csign.enabled and not sign.csign.enabled
        flagged = load_recipe(path, {"csign": False})
        differ = {k for k in main.to_dict() if main.to_dict()[k] != sign.to_dict()[k]}
        assert differ == {"name", "description", "csign"}, path.name
        assert flagged.csign == sign.csign


def test_recipes_carry_the_papers_settings() -> None:
    for name, arch, classes in (
        ("cifar10_wrn22_16", "wrn22_16", 10),
        ("cifar10_wrn22_64", "wrn22_64", 10),
        ("cifar100_wrn22_16", "wrn22_16", 100),
        ("cifar100_wrn22_64", "wrn22_64", 100),
    ):
        r = load_recipe(name)
        assert (r.model.arch, r.model.kwargs["num_classes"]) == (arch, classes)
        assert (r.optim.name, r.optim.lr, r.optim.momentum, r.optim.nesterov) == (
            "sgd",
            0.1,
            0.9,
            False,
        )
        assert r.schedule.name == "cosine" and r.data.augment == "cifar"
        assert (r.csign.m, r.csign.delta) == (2, 0.1)
    for name, arch in (
        ("imagenet_bireal_resnet18", "bireal_resnet18"),
        ("imagenet_reactnet_resnet18", "reactnet_resnet18"),
    ):
        r = load_recipe(name)
        assert r.model.arch == arch and r.data.dataset == "imagefolder"
        assert (r.optim.name, r.optim.lr, r.optim.momentum) == ("adam", 1e-3, 0.9)
        assert r.schedule.name == "linear" and r.data.augment == "imagenet"
        assert r.data.image_size == 224 and (r.csign.m, r.csign.delta) == (2, 0.1)
    assert load_recipe("imagenet_reactnet_resnet18").train.epochs == 64


def test_unknown_keys_and_bad_values_are_named(tmp_path: Path) -> None:
    base = yaml.safe_load((recipes_dir() / "digits.yaml").read_text())
    bad = dict(base, optim={**base["optim"], "lrr": 0.1})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(RecipeError, match=r"unknown key 'optim\.lrr'"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"unknown key 'train\.max_step'"):
        load_recipe("digits", {"train.max_step": 3})
    with pytest.raises(RecipeError, match=r"train\.epochs='ten'"):
        load_recipe("digits", {"train.epochs": "ten"})
    with pytest.raises(RecipeError, match=r"delta"):
        load_recipe("digits", {"csign.delta": 1.5})
    with pytest.raises(RecipeError, match="missing required key 'optim'"):
        load_recipe({k: v for k, v in base.items() if k != "optim"})
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    # YAML 1.1 reads 5e-4 as a string; the recipe takes the number it spells.
    assert load_recipe("digits", {"optim.weight_decay": "5e-4"}).optim.weight_decay == 5e-4
    assert parse_assignment("optim.lr=0.01") == ("optim.lr", 0.01)
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_assignment("optim.lr")


# ----------------------------------------------------------------------------- data errors
def test_missing_or_malformed_data_is_a_one_line_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cases = [
        ("cifar10_wrn22_16", None, "needs a data directory"),
        ("cifar10_wrn22_16", tmp_path / "nowhere", "cifar-10-batches-py"),
        ("imagenet_bireal_resnet18", tmp_path, "ImageFolder tree"),
    ]
    broken = write_cifar(tmp_path / "broken")
    (broken / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    cases.append(("cifar10_wrn22_16", broken, "not CIFAR python batches"))
    partial = write_cifar(tmp_path / "partial", "cifar100")
    (partial / "cifar-100-python" / "meta").unlink()
    cases.append(("cifar100_wrn22_16", partial, "lacks meta"))
    for recipe, data, expected in cases:
        with pytest.raises(DataError, match=expected) as info:
            finetune(recipe, data=data, out=out, max_steps=1, progress=False)
        assert "\n" not in str(info.value)
    assert not out.exists()


def test_cli_reports_errors_in_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "uabnn_convert",
            "finetune",
            "cifar10_wrn22_16",
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=run_env(),
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cifar-10-batches-py" in lines[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- real formats
@pytest.mark.parametrize(
    ("recipe", "kind"),
    [("cifar10_wrn22_16", "cifar10"), ("cifar100_wrn22_64_sign", "cifar100")],
)
def test_cifar_recipes_train_on_the_real_format(tmp_path: Path, recipe: str, kind: str) -> None:
    data = write_cifar(tmp_path / "data", kind)
    result = finetune(
        recipes_dir() / f"{recipe}.yaml",
        data=data,
        out=tmp_path / "run",
        max_steps=2,
        batch_size=16,
        overrides={"data.num_workers": 0, "data.eval_batch_size": 16, "log.every_steps": 1},
        progress=False,
    )
    assert result.step == 2
    kinds = [r["kind"] for r in result.history]
    assert kinds == ["train", "train", "eval"]
    assert all(np.isfinite(r["loss"]) for r in result.history if r["kind"] == "train")
    assert result.checkpoint is not None and result.checkpoint.is_file()
    assert (tmp_path / "run" / "metrics.png").is_file()


@pytest.mark.parametrize("recipe", ["imagenet_bireal_resnet18", "imagenet_reactnet_resnet18"])
def test_imagenet_recipes_train_on_an_imagefolder(tmp_path: Path, recipe: str) -> None:
    data = write_imagefolder(tmp_path / "data")
    result = finetune(
        recipe,
        data=data,
        out=tmp_path / "run",
        max_steps=2,
        batch_size=4,
        image_size=32,
        overrides={"data.num_workers": 0, "log.every_steps": 1, "log.plot": False},
        progress=False,
    )
    assert result.step == 2 and result.final["val_top1"] >= 0
    assert [r["kind"] for r in result.history] == ["train", "train", "eval"]
    assert all(site.num_updates == 2 for _, site in uc.sites(result.model))


# ----------------------------------------------------------------------------- metrics
def test_metrics_log_plot_and_sign_baseline(tmp_path: Path) -> None:
    runs = {}
    for label, sign in (("csign", False), ("sign", True)):
        runs[label] = finetune(
            "digits",
            out=tmp_path / label,
            max_steps=12,
            sign_baseline=sign,
            overrides={**QUICK, "log.plot": True},
            compare=runs["csign"].run_dir if sign else None,
            progress=False,
        )
    csign, sign = runs["csign"], runs["sign"]
    assert sign.recipe.name == "digits_sign" and not sign.recipe.csign.enabled
    # delta = 1 is exactly sign: every site of the baseline has delta 1 and never vetoes.
    assert {s.delta for _, s in uc.sites(sign.model)} == {1.0}
    logged = read_history(csign.run_dir)
    assert logged == json.loads(json.dumps(csign.history))
    train = [r for r in logged if r["kind"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 12]
    for r in train:
        for key in ("loss", "top1", "top5", "lr", "flip_rate", "vetoed", "uncertainty"):
            assert np.isfinite(r[key]), key
        assert set(r["sites"]) == {name for name, _ in uc.sites(csign.model)}
    assert [r["step"] for r in logged if r["kind"] == "eval"] == [10, 12]
    assert sum(r["vetoed"] for r in train) > 0
    sign_train = [r for r in sign.history if r["kind"] == "train"]
    assert all(r["vetoed"] == 0 for r in sign_train) and sum(r["flips"] for r in sign_train) > 0
    assert (csign.run_dir / "metrics.png").stat().st_size > 0
    assert (sign.run_dir / "metrics.png").stat().st_size > 0
    fig = plot_runs([("c-sign", csign.history), ("sign", sign.history)], tmp_path / "fig5.png")
    assert fig.stat().st_size > 0
    cli = CliRunner().invoke(
        cli_app, ["plot", str(csign.run_dir), str(sign.run_dir), "-o", str(tmp_path / "cli.png")]
    )
    assert cli.exit_code == 0 and (tmp_path / "cli.png").stat().st_size > 0
    saved = yaml.safe_load((csign.run_dir / "recipe.yaml").read_text())
    assert saved == csign.recipe.to_dict()

    # The per-site CSV and TensorBoard hold the same numbers as the JSON log.
    lines = (csign.run_dir / "sites.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,site,flip_rate,vetoed_rate"
    expected = [(r["step"], name, v["flip_rate"]) for r in train for name, v in r["sites"].items()]
    rows = [line.split(",") for line in lines[1:]]
    assert [(int(r[0]), r[2]) for r in rows] == [(s, n) for s, n, _ in expected]
    assert np.allclose([float(r[3]) for r in rows], [f for _, _, f in expected])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(csign.run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    site = next(iter(train[0]["sites"]))
    assert {"train/loss", "train/lr", "train/flip_rate", "train/uncertainty", "eval/top1"} <= tags
    assert {f"flip_rate/{site}", f"vetoed_rate/{site}"} <= tags
    logged_loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in logged_loss] == [5, 10, 12]
    assert np.allclose([v for _, v in logged_loss], [r["loss"] for r in train])


def test_gradient_accumulation_advances_csign_once_per_optimizer_step(tmp_path: Path) -> None:
    forwards = []
    result = finetune(
        "digits",
        out=tmp_path / "run",
        max_steps=3,
        overrides={**QUICK, "train.grad_accum": 4},
        callbacks=[lambda s: forwards.append(s.step)],
        progress=False,
    )
    model = result.model
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    updates = {int(s.num_updates) for _, s in uc.sites(model)}
    assert updates == {3} and forwards == [1, 2, 3]
    # The first forward was update 1; one more training forward sees the weights of step 3.
    model.train()
    model(torch.zeros(2, 1, 8, 8))
    assert {int(s.num_updates) for _, s in uc.sites(model)} == {3 + 1}
    assert len(calls) == 1


def test_micro_batches_are_counted_and_batch_must_divide(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="divisible"):
        finetune(
            "digits",
            out=tmp_path / "a",
            overrides={"data.batch_size": 10, "train.grad_accum": 3},
            max_steps=1,
            progress=False,
        )


@pytest.mark.parametrize("amp", ["bfloat16", "float16"])
def test_amp_on_cpu(tmp_path: Path, amp: str) -> None:
    result = finetune(
        "digits",
        out=tmp_path / "run",
        max_steps=2,
        overrides={**QUICK, "train.amp": amp, "train.clip_grad": 5.0},
        progress=False,
    )
    assert all(np.isfinite(r["loss"]) for r in result.history if r["kind"] == "train")
    state = torch.load(result.checkpoint, weights_only=True)["training"]
    assert (state["scaler"] is not None) == (amp == "float16")


def test_an_existing_run_needs_resume(tmp_path: Path) -> None:
    finetune("digits", out=tmp_path / "run", max_steps=1, overrides=QUICK, progress=False)
    with pytest.raises(ResumeError, match="--resume latest"):
        finetune("digits", out=tmp_path / "run", max_steps=2, overrides=QUICK, progress=False)


def test_example_train_loop_runs(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("train_loop", ROOT / "examples" / "train_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--epochs", "1"])
    out = capsys.readouterr().out
    assert "test accuracy" in out and "identical eval outputs: True" in out
