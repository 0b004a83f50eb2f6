"""A regular install works: build the wheel, install it outside the source tree, and run the
tool from another directory (recipes and defaults come from inside the wheel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(
    ".venv", ".git", "runs", "build", "dist", "__pycache__", "*.egg-info", ".ruff_cache", "results"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the source tree (the checkout stays clean), installed with
    ``pip install --target``: the directory that holds the installed package."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=SKIP)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    for args in (
        ["wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"), str(source)],
        ["install", "--no-deps", "--no-index", "--target", str(base / "site")],
    ):
        if args[0] == "install":
            args.append(str(next((base / "dist").glob("uabnn_convert-*.whl"))))
        proc = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return base / "site"


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(site / "bin" / "uabnn-convert"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_wheel_ships_the_package_and_its_recipes(installed: Path) -> None:
    wheel = next(installed.parent.glob("dist/uabnn_convert-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "uabnn_convert/recipes/digits.yaml" in names
    assert "uabnn_convert/recipes/imagenet_bireal_resnet18.yaml" in names
    assert not [n for n in names if n.startswith(("tests/", "experiments/", "benchmarks/"))]
    assert (installed / "bin" / "uabnn-convert").is_file()


def test_finetune_and_demo_run_from_another_directory(installed: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    where = subprocess.run(
        [sys.executable, "-c", "import uabnn_convert, sys; print(uabnn_convert.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed), where  # not the source tree

    run = _run(installed, tmp_path, "finetune", "digits", "--max-steps", "2", "-q")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "runs" / "digits" / "ckpt-00000002.pt").is_file()

    listed = _run(installed, tmp_path, "finetune", "--help")
    assert "cifar10_wrn22_16" in listed.stdout and "digits" in listed.stdout

    demo = _run(installed, tmp_path, "demo", "--epochs", "1", "--out", "demo")
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (tmp_path / "demo" / "model.pt").is_file()
